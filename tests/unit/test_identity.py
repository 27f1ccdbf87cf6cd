"""Callers: tokens (looked up by digest, confirmed in constant time), certificate subjects,
pass-through keys; development mode and the start-up rules around it."""

from __future__ import annotations

import hmac

import grpc
import pytest
from pydantic import ValidationError

from gemini_gateway.server import errors, identity, startup
from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import (
    PEER_SUBJECT,
    CallerDirectory,
    normalize_subject,
    token_sha256,
)

SEARCH_TOKEN = "search-token-0123456789"
ADS_SUBJECT = "CN=ads-batch,OU=ads,O=Example Corp"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def settings(**overrides: object) -> Settings:
    projects = {
        "search": ProjectConfig(
            callers=[
                CallerConfig(
                    name="frontend", token_sha256=token_sha256(SEARCH_TOKEN).upper()
                )  # a digest given in capitals still matches
            ]
        ),
        "ads": ProjectConfig(callers=[CallerConfig(name="batch", tls_subject=ADS_SUBJECT)]),
    }
    return Settings(**{"projects": projects, **overrides})  # type: ignore[arg-type]


def code_of(error: pytest.ExceptionInfo[errors.UpstreamError]) -> grpc.StatusCode:
    return error.value.code


def test_development_mode_is_anonymous_in_default() -> None:
    directory = CallerDirectory(Settings())
    assert directory.development_mode
    found = directory.identify(())
    assert (found.project, found.caller) == ("default", "anonymous")


def test_tokens_identify_their_project_and_are_confirmed_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    directory = CallerDirectory(settings())
    assert not directory.development_mode
    found = directory.identify(bearer(SEARCH_TOKEN))
    assert (found.project, found.caller) == ("search", "frontend")
    digest = token_sha256(SEARCH_TOKEN).encode()
    assert compared == [(digest, digest)]


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        bearer("not-a-known-token"),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer "),),
        (("authorization", b"Bearer \xff\xfe"),),
    ],
)
def test_missing_or_unknown_tokens_are_unauthenticated(metadata: identity.Metadata) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        CallerDirectory(settings()).identify(metadata)
    assert code_of(info) is grpc.StatusCode.UNAUTHENTICATED
    assert SEARCH_TOKEN not in info.value.message


def test_certificate_subjects_identify_callers_in_either_spelling() -> None:
    directory = CallerDirectory(settings())
    assert directory.uses_certificates
    assert directory.identify((), ADS_SUBJECT).project == "ads"
    assert directory.identify((), "cn = ads-batch, ou=ads , o=Example Corp").caller == "batch"
    openssl = CallerDirectory(
        Settings(
            projects={
                "ads": ProjectConfig(
                    callers=[CallerConfig(name="b", tls_subject="/O=Example Corp/OU=ads/CN=x")]
                )
            }
        )
    )
    assert openssl.identify((), "CN=x,OU=ads,O=Example Corp").caller == "b"
    with pytest.raises(errors.UpstreamError) as info:
        directory.identify((), "CN=stranger,O=Example Corp")
    assert code_of(info) is grpc.StatusCode.UNAUTHENTICATED
    assert "stranger" in info.value.message


def test_the_subject_noted_for_the_call_is_used_when_none_is_given() -> None:
    directory = CallerDirectory(settings())
    token = PEER_SUBJECT.set(ADS_SUBJECT)
    try:
        assert directory.identify(()).project == "ads"
    finally:
        PEER_SUBJECT.reset(token)


def test_a_token_decides_even_over_a_known_certificate() -> None:
    directory = CallerDirectory(settings())
    assert directory.identify(bearer(SEARCH_TOKEN), ADS_SUBJECT).project == "search"
    with pytest.raises(errors.UpstreamError) as info:
        directory.identify(bearer("wrong"), ADS_SUBJECT)
    assert code_of(info) is grpc.StatusCode.UNAUTHENTICATED


def test_normalize_subject() -> None:
    assert normalize_subject("/O=Org/CN=a") == "CN=a,O=Org"
    assert normalize_subject(" cn=a , o = Org ") == "CN=a,O=Org"
    assert normalize_subject(r"CN=a\,b,O=Org") == r"CN=a\,b,O=Org"


def test_duplicate_credentials_are_refused() -> None:
    twice = ProjectConfig(
        callers=[
            CallerConfig(name="one", token_sha256=token_sha256("t")),
            CallerConfig(name="two", token_sha256=token_sha256("t")),
        ]
    )
    with pytest.raises(ValueError, match="same token"):
        CallerDirectory(Settings(projects={"p": twice}))
    same_subject = ProjectConfig(
        callers=[
            CallerConfig(name="a", tls_subject="CN=x"),
            CallerConfig(name="b", tls_subject="cn=x"),
        ]
    )
    with pytest.raises(ValueError, match="same tls_subject"):
        CallerDirectory(Settings(projects={"p": same_subject}))


def test_a_caller_needs_a_credential_and_a_digest_is_a_digest() -> None:
    with pytest.raises(ValidationError, match="needs token_sha256 or tls_subject"):
        CallerConfig(name="nobody")
    with pytest.raises(ValidationError, match="64 hex digits"):
        CallerConfig(name="raw", token_sha256="the-token-itself")


# --- pass-through mode ------------------------------------------------------------------------


def test_pass_through_refuses_a_call_without_its_own_key() -> None:
    directory = CallerDirectory(Settings(pass_through_api_key=True, upstream="gemini"))
    with pytest.raises(errors.UpstreamError) as info:
        directory.check_upstream_key(())
    assert code_of(info) is grpc.StatusCode.UNAUTHENTICATED
    assert "x-goog-api-key" in info.value.message
    directory.check_upstream_key((("x-goog-api-key", "caller-key"),))


def test_pass_through_falls_back_only_when_told() -> None:
    lenient = Settings(pass_through_api_key=True, pass_through_fallback_to_gateway_key=True)
    CallerDirectory(lenient).check_upstream_key(())
    CallerDirectory(Settings()).check_upstream_key(())  # no pass-through: nothing to bring
    vertex = Settings(pass_through_api_key=True, upstream="vertex", vertex_project="p")
    CallerDirectory(vertex).check_upstream_key(())  # Vertex AI takes no API key


# --- development mode binds loopback ----------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_development_mode_serves_loopback(host: str) -> None:
    startup.check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10"])
def test_development_mode_elsewhere_needs_the_flag(host: str) -> None:
    with pytest.raises(startup.StartupError) as info:
        startup.check_exposure(Settings(host=host))
    assert "allow_unauthenticated" in info.value.message
    assert "--allow-unauthenticated" in (info.value.hint or "")
    startup.check_exposure(Settings(host=host, allow_unauthenticated=True))
    startup.check_exposure(settings(host=host, tls_client_ca_file="ca.pem"))  # callers given


def test_certificate_callers_need_mutual_tls() -> None:
    with pytest.raises(startup.StartupError) as info:
        startup.check_exposure(settings())
    assert "tls_subject" in info.value.message
    assert "--tls-client-ca" in (info.value.hint or "")


def test_the_banner_says_which_mode() -> None:
    (line,) = startup.security_lines(Settings())
    assert "development mode" in line and "loopback only" in line
    (line,) = startup.security_lines(Settings(host="0.0.0.0", allow_unauthenticated=True))
    assert line.startswith("  WARNING: development mode on 0.0.0.0")
    lines = startup.security_lines(
        settings(open_reflection=False, pass_through_api_key=True, tls_client_ca_file="ca.pem")
    )
    assert lines[0] == (
        "  callers: 2 in 2 project(s); every call needs a caller token or client certificate "
        "(health open to all)"
    )
    assert lines[1] == (
        "  pass-through: each call's own x-goog-api-key goes upstream; calls without one are "
        "refused"
    )
