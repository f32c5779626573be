"""No password in any output, whatever the URL looks like: the redactor, config errors and every store command."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spin_ray.cli import main
from spin_ray.config import config_from_dict
from spin_ray.errors import ConfigError
from spin_ray.redact import MASK, redact_url, scrub

# Every generated password holds this marker; no other part of a generated URL can (no Z, no q).
MARKER = "Zq9"
PASSWORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#/?@:%!$&'()*+,;=-._~"
HOST_CHARS = "abcdefghijklmnoprstuvwxyz0123456789.-"
SCHEMES = ("redis://", "rediss://", "unix://", "redis:/", "redis:", "redsi://", "", "http://")


@st.composite
def urls_with_a_password(draw) -> tuple[str, str]:
    """A Redis URL, well formed or not, and the password it holds."""
    left = draw(st.text(PASSWORD_CHARS, max_size=8))
    right = draw(st.text(PASSWORD_CHARS, max_size=8))
    password = left + MARKER + right
    user = draw(st.text("abcdefghijklmnoprstuvwxyz", max_size=6))
    host = draw(st.text(HOST_CHARS, min_size=1, max_size=15))
    port = draw(st.one_of(st.just(""), st.integers(0, 99999).map(lambda p: f":{p}"),
                          st.text("abcdefghijklmnoprstuvwxyz", min_size=1, max_size=5).map(lambda p: f":{p}")))
    tail = draw(st.sampled_from(("", "/0", "/15", "/0?socket_timeout=1", "/x/y")))
    scheme = draw(st.sampled_from(SCHEMES))
    form = draw(st.sampled_from(("userinfo", "password-only", "query")))
    if form == "userinfo":
        return f"{scheme}{user}:{password}@{host}{port}{tail}", password
    if form == "password-only":  # a password where the user name goes (with a colon it reads as user:password)
        password = password.replace(":", "")
        return f"{scheme}{password}@{host}{port}{tail}", password
    return f"{scheme}{host}{port}{tail}{'&' if '?' in tail else '?'}password={password}", password


@pytest.mark.parametrize("url, shown", [
    ("redis://:My#Pass@127.0.0.1:6380/0", f"redis://:{MASK}@127.0.0.1:6380/0"),
    ("redis:/:My#Pass@127.0.0.1:6380/0", f"redis:/:{MASK}@127.0.0.1:6380/0"),
    ("redis://:se/cr?et@host:notaport/0", f"redis://:{MASK}@host:notaport/0"),
    ("rediss://alice:p@ss@redis.example.org:6380/2", f"rediss://alice:{MASK}@redis.example.org:6380/2"),
    ("pass:word@host", f"pass:{MASK}@host"),  # no scheme: the part before the colon reads as one
    ("redis://secret@host", f"redis://{MASK}@host"),
    ("redis://host:6379/0?password=se&cret&db=1", f"redis://host:6379/0?password={MASK}"),  # the rest may be password
    ("redis://10.0.0.1:7000", "redis://10.0.0.1:7000"),
])
def test_hand_made_urls_are_redacted_without_parsing(url, shown):
    assert redact_url(url) == shown


@settings(max_examples=300, deadline=None)
@given(urls_with_a_password())
def test_no_generated_url_shows_its_password(case):
    url, password = case
    assert MARKER not in redact_url(url)
    # A library's error may echo the URL, the password, its encodings or the pieces a parser cut it into.
    message = f"cannot use {url}: bad port {password!r} in {password.split('#')[0]} ({password.replace('@', '%40')})"
    assert MARKER not in scrub(message, url)


def test_config_errors_never_echo_a_url_password():
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"store": {"url": ["redis://:Zq9secret@host:6379/0"]}})
    assert "store.url" in str(raised.value) and MARKER not in str(raised.value)


def _store_commands(tmp_path) -> list[list[str]]:
    """Every `spin-ray store` command that connects, with the arguments it needs besides the URL."""
    return [["stats"], ["worst"], ["filter"], ["export", str(tmp_path / "out.parquet")],
            ["import", str(tmp_path / "in.parquet")], ["plot", "--out", str(tmp_path / "p.png")],
            ["gallery", "--out", str(tmp_path / "gallery")]]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(urls_with_a_password())
@example(("redis://:" + MARKER + "@.", MARKER))  # a host that cannot be IDNA-encoded (once a traceback)
def test_no_store_command_prints_or_logs_the_password(tmp_path, capsys, caplog, case):
    url, _ = case
    (tmp_path / "in.parquet").write_bytes(b"not parquet")
    caplog.set_level(logging.DEBUG)
    for command in _store_commands(tmp_path):
        code = main(["store", command[0], "--url", url, "--timeout", "0.1", *command[1:]])
        out, err = capsys.readouterr()
        assert code != 0, (command, url)
        assert MARKER not in out + err, (command, url, out + err)
    assert MARKER not in caplog.text
    caplog.clear()
