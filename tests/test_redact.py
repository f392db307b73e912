"""The one redaction: credentials masked in strings, dicts and lists; everything else kept."""

import pytest

from dagster_brain.config import masked
from dagster_brain.redact import MASK, has_credentials, redact, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # userinfo in URLs, URIs and DSNs: the host, port and path stay
        ("http://admin:PASS@host:6333/path", "http://****@host:6333/path"),
        ("https://tok3n@api.example.com", "https://****@api.example.com"),
        ("postgresql://u:p@h/db", "postgresql://****@h/db"),
        ("tcp://:pw@redis:6379/0", "tcp://****@redis:6379/0"),
        ("http://a:b@c@host/x", "http://****@host/x"),  # '@' inside the password
        ("HTTP://Root:Milvus@127.0.0.1:19530", "HTTP://****@127.0.0.1:19530"),
        # query-string credentials, any case; other parameters stay
        (
            "http://admin:PASS@host:6333/path?api_key=abc&x=1",
            "http://****@host:6333/path?api_key=****&x=1",
        ),
        ("https://idx.svc.io?API_KEY=XyZ", "https://idx.svc.io?API_KEY=****"),
        ("db://mydb?region=us&token=abc#frag", "db://mydb?region=us&token=****#frag"),
        ("https://h/x?Password=p1&key=k1&sig=s1", "https://h/x?Password=****&key=****&sig=****"),
        (
            "s3://b/k?X-Amz-Credential=c&X-Amz-Signature=s",
            "s3://b/k?X-Amz-Credential=****&X-Amz-Signature=****",
        ),
        # keyword DSNs, bare user:pass@host, quoted pairs, bearer tokens
        ("host=h password=sec dbname=x", "host=h password=**** dbname=x"),
        ("user:pass@host:5432", "****@host:5432"),
        ("{'api_key': 'abc', 'n': 1}", "{'api_key': '****', 'n': 1}"),
        ('{"client_secret": "abc"}', '{"client_secret": "****"}'),
        ("Authorization: Bearer abcdefghijk123", "Authorization: Bearer ****"),
    ],
)
def test_credentials_are_masked(text, expected):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # masking twice changes nothing


def test_several_urls_in_one_message():
    text = (
        "similarity backend 'qdrant' at http://u:p1@a:6333: cannot connect; "
        "tried https://b.io?token=t2 and milvus uri 'http://root:p3@c:19530' too"
    )
    out = redact_text(text)
    assert out == (
        "similarity backend 'qdrant' at http://****@a:6333: cannot connect; "
        "tried https://b.io?token=**** and milvus uri 'http://****@c:19530' too"
    )
    assert not any(s in out for s in ("p1", "t2", "p3"))


@pytest.mark.parametrize(
    "text",
    [
        "see http://h:6333/collections and mail admin@example.com",
        "brain_key=uniq embeddings_key=e max_filter_ids=1000",
        "/tmp/data/x:y/z@2.png",
        "cat/0",
        "s3://bucket/key/with/path.parquet",
        "time 10:30 at home; ratio 3:4",
        "pets__brain__sim",
        "http://127.0.0.1:9",
        "file:///tmp/lancedb",
        "",
    ],
)
def test_ordinary_text_is_kept(text):
    assert redact_text(text) == text
    assert not has_credentials(text)


def test_nested_dicts_and_lists():
    value = {
        "backend": {"url": "http://u:pw@h:1", "api_key": "sk-123456789", "timeout": 5},
        "runs": [{"token": 12345678, "name": "a"}, "https://x.io?apikey=k", ("ok", "p=1")],
        "db_password": None,
        "use_token": True,
        "paths": ["cat/0", "dog/1"],
    }
    assert redact(value) == {
        "backend": {"url": "http://****@h:1", "api_key": MASK, "timeout": 5},
        "runs": [{"token": MASK, "name": "a"}, "https://x.io?apikey=****", ("ok", "p=1")],
        "db_password": None,
        "use_token": True,
        "paths": ["cat/0", "dog/1"],
    }
    assert value["backend"]["api_key"] == "sk-123456789"  # a copy: the input is kept


def test_other_values_pass_and_nothing_raises():
    class Odd:
        def __str__(self):
            raise RuntimeError("no text")

    odd = Odd()
    assert redact(odd) is odd and redact(3.5) == 3.5 and redact(None) is None
    deep: list = []
    deep.append(deep)  # a cycle ends at the depth limit instead of recursing forever
    redact(deep)
    assert redact_text("x" * 100_000 + "@") == "x" * 100_000 + "@"


def test_config_masking_uses_the_same_redaction():
    config = {
        "similarity_backends": {
            "qdrant": {"url": "http://admin:PASS@host:6333", "api_key": "qd-secret-9876"},
            "pinecone": {"host": "https://p.io?api_key=K3Y"},
        }
    }
    out = masked(config)
    assert out["similarity_backends"]["qdrant"] == {
        "url": "http://****@host:6333",
        "api_key": "****9876",  # secret-named values keep the brain config's last-4 mask
    }
    assert out["similarity_backends"]["pinecone"]["host"] == "https://p.io?api_key=****"


def test_errors_keep_a_cause_only_when_it_leaks_nothing():
    from dagster_brain.redact import safe_cause
    from dagster_brain.similarity.backends.base import BackendUnavailable

    clean = ConnectionError("[Errno 111] Connection refused")
    assert safe_cause(clean) is clean
    try:
        try:
            raise ConnectionError("GET http://127.0.0.1:1/x?token=T0K: refused")
        except ConnectionError as inner:
            raise RuntimeError("client failed") from inner
    except RuntimeError as outer:
        assert safe_cause(outer) is None  # the leak sits one step down the chain
    err = BackendUnavailable("similarity backend 'qdrant' at http://admin:PW@h:6333: refused")
    assert str(err) == "similarity backend 'qdrant' at http://****@h:6333: refused"


def test_recorded_backend_params_never_hold_or_reuse_credentials():
    from dagster_brain.similarity.compute import public_params, recorded_params

    settings = {
        "url": "http://admin:PW@h:6333",
        "api_key": "k",
        "host": "https://p.io?api_key=K",
        "timeout": 5,
        "collection_name": None,
        "path": "/data/qdrant",
    }
    assert public_params(settings) == {"timeout": 5, "path": "/data/qdrant"}
    # a record stored before credentials were dropped holds masked values: never reopened
    legacy = {"url": "http://****@h:6333", "timeout": 5}
    assert recorded_params(legacy) == {"timeout": 5}


def test_a_step_error_holding_a_credential_is_raised_redacted():
    """The asset steps' safety net: an SDK error (and its cause) naming a URL with a password
    reaches Dagster redacted and without its chain; other errors pass untouched."""
    import pytest

    from dagster_brain.factory import no_credentials_in_errors

    secret = "hunter2-0x7f"
    with pytest.raises(RuntimeError) as caught:
        with no_credentials_in_errors():
            try:
                raise OSError(f"refused by http://bob:{secret}@vec-db:19530")
            except OSError as err:
                raise ValueError("index build failed") from err
    text = str(caught.value)
    assert secret not in text and caught.value.__cause__ is None
    assert text == "ValueError: index build failed <- OSError: refused by http://****@vec-db:19530"
    with pytest.raises(KeyError, match="plain"):
        with no_credentials_in_errors():
            raise KeyError("plain")
