"""The scrubber masks a secret where it stands whole, wherever text carries it, and nowhere else."""

from __future__ import annotations

import orjson
import pytest

from pipeline.model import Scrubber, Secret

TOKEN = "tok-3f9a"


@pytest.mark.parametrize(("secret", "text", "expected"), [
    # a short secret inside a longer word is not the secret
    ("tok", "org token", "org token"),
    ("tok", "org token  PASS  WIGZO_ORG_TOKEN is set", "org token  PASS  WIGZO_ORG_TOKEN is set"),
    ("tok", "stokes", "stokes"),
    ("tok", "tok", "***"),
    ("tok", "token tok.", "token ***."),
    ("tok", "tok_en", "***_en"),  # '_' ends a run of letters and digits
    (TOKEN, f"x{TOKEN}", f"x{TOKEN}"),
    (TOKEN, f"{TOKEN}0", f"{TOKEN}0"),
    # a real token wherever text carries it
    (TOKEN, TOKEN, "***"),
    (TOKEN, f"https://app.wigzo.com/learn/{TOKEN}/identify", "https://app.wigzo.com/learn/***/identify"),
    (TOKEN, f"POST https://h/rest?org_token={TOKEN}&token={TOKEN}", "POST https://h/rest?org_token=***&token=***"),
    (TOKEN, f"https://wigzo-dev:{TOKEN}@h/rest", "https://wigzo-dev:***@h/rest"),
    (TOKEN, f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ***"),
    (TOKEN, f"X-Org-Token:{TOKEN}\r\n", "X-Org-Token:***\r\n"),
    (TOKEN, f"sasl.password={TOKEN}", "sasl.password=***"),
    (TOKEN, f"org={TOKEN},api={TOKEN}", "org=***,api=***"),
    (TOKEN, f'{{"org": "{TOKEN}"}}', '{"org": "***"}'),
    (TOKEN, f"'{TOKEN}' was refused", "'***' was refused"),
    # ...also once escaped: URL-encoded, a JSON line's \n, a bytes repr's \xNN, a JSON \uNNNN
    (TOKEN, f"next=https%3A%2F%2Fh%2Frest%3Forg_token%3D{TOKEN}", "next=https%3A%2F%2Fh%2Frest%3Forg_token%3D***"),
    (TOKEN, f"first line\\n{TOKEN}", "first line\\n***"),
    (TOKEN, f"b'\\x00{TOKEN}'", "b'\\x00***'"),
    (TOKEN, f"\\u0022{TOKEN}\\u0022", "\\u0022***\\u0022"),
    # a secret with punctuation at an edge needs no guard on that side
    ("!pa55", "user:x!pa55", "user:x***"),
])
def test_a_secret_is_masked_where_it_stands_whole(secret: str, text: str, expected: str) -> None:
    assert Scrubber([Secret(secret)])(text) == expected


def test_the_longer_of_two_overlapping_secrets_is_masked_whole() -> None:
    scrub = Scrubber([Secret("tok"), Secret("tok-3f9a")])
    assert scrub("tok-3f9a and tok") == "*** and ***"


def test_a_token_after_a_newline_in_a_json_log_line_is_masked() -> None:
    line = orjson.dumps({"msg": f"answer was:\n{TOKEN}\n"}).decode()
    assert TOKEN not in Scrubber([Secret(TOKEN)])(line)


def test_no_secrets_no_change_but_query_tokens() -> None:
    assert Scrubber([Secret("")])("org token ?token=abc") == "org token ?token=***"
