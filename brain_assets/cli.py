"""Brain CLI."""
def main():
    print("ok")
