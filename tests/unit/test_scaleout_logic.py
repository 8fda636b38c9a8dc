"""Unit tests for scale-out: SigV4 signing (published AWS vectors), the bucket check's
verdicts, cross-host validation, and what the replicas, haproxy and redis get rendered."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import yaml

from registry_kit import s3check
from registry_kit.commands import OSInfo
from registry_kit.facts import HostState
from registry_kit.model import topology as scaleout
from registry_kit.model.settings import Secret, Settings, SettingsError
from registry_kit.render.config import render_config
from registry_kit.roles import cache, loadbalancer

S3 = {"driver": "s3", "bucket": "registry", "region": "us-east-1",
      "regionendpoint": "http://10.9.0.5:7480", "accesskey_env": "RK_AK",
      "secretkey_env": "RK_SK"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_AK", "AKIDLAB")
    monkeypatch.setenv("RK_SK", "lab-secret")


# --- SigV4 -----------------------------------------------------------------------------------

VANILLA = dict(access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
               region="us-east-1", service="service", amz_date="20150830T123600Z")


def test_sigv4_get_vanilla() -> None:
    # AWS Signature Version 4 test suite, get-vanilla.
    headers = s3check.sign(method="GET", url="https://example.amazonaws.com/", headers={},
                           **VANILLA)
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


def test_sigv4_query_sorted() -> None:
    # get-vanilla-query-order-key-case: parameters are signed in sorted order.
    headers = s3check.sign(method="GET", headers={}, **VANILLA,
                           url="https://example.amazonaws.com/?Param2=value2&Param1=value1")
    assert headers["authorization"].endswith(
        "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")


def test_sigv4_s3_get_object_example() -> None:
    # Amazon S3 API reference, "Example: GET Object" (header-based SigV4).
    request, signed = s3check.canonical_request(
        "GET", "/test.txt", "", {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
                                 "x-amz-content-sha256": s3check.EMPTY_SHA256,
                                 "x-amz-date": "20130524T000000Z"}, s3check.EMPTY_SHA256)
    assert signed == "host;range;x-amz-content-sha256;x-amz-date"
    import hashlib
    assert hashlib.sha256(request.encode()).hexdigest() == \
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    headers = s3check.sign(
        method="GET", url="https://examplebucket.s3.amazonaws.com/test.txt",
        headers={"range": "bytes=0-9", "x-amz-content-sha256": s3check.EMPTY_SHA256},
        access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1", service="s3", amz_date="20130524T000000Z")
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_bucket_url_styles() -> None:
    assert s3check.bucket_url(S3) == "http://10.9.0.5:7480/registry"
    assert s3check.bucket_url({"bucket": "b", "region": "eu-west-1"}) == \
        "https://b.s3.eu-west-1.amazonaws.com/"
    assert s3check.bucket_url({"bucket": "b", "regionendpoint": "minio:9000",
                               "secure": False}) == "http://minio:9000/b"


@pytest.mark.parametrize(("status", "words"), [
    (404, "does not exist"), (403, "not accepted"), (0, "not reachable"), (500, "answered 500")])
def test_explain(status: int, words: str) -> None:
    assert words in (s3check.explain(status, "", S3) or "")


def test_explain_ok() -> None:
    assert s3check.explain(200, "", S3) is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    answer = 200

    def do_HEAD(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        self.send_response(self.answer)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_head_bucket_sends_a_signed_head(endpoint: str) -> None:
    _Recorder.seen.clear()
    _Recorder.answer = 404
    params = {**S3, "regionendpoint": endpoint, "accesskey": Secret("AKIDLAB"),
              "secretkey": Secret("lab-secret")}
    status, _ = s3check.head_bucket(params)
    assert status == 404
    request = _Recorder.seen[0]
    assert request["path"] == "/registry"
    assert request["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDLAB/")
    assert "lab-secret" not in str(request)
    assert request["x-amz-content-sha256"] == s3check.EMPTY_SHA256


def test_check_storage_stops_with_one_line(make_settings: Callable[..., Settings],
                                           endpoint: str) -> None:
    _Recorder.answer = 403
    settings = make_settings(registry_storage={**S3, "regionendpoint": endpoint})
    with pytest.raises(SettingsError) as error:
        s3check.check_storage([settings])
    text = str(error.value)
    assert text.startswith("reg-host-1: setting registry_storage.bucket='registry' is not "
                           "allowed: the access key or secret key is not accepted")
    assert "\n" not in text and "lab-secret" not in text
    _Recorder.answer = 200
    s3check.check_storage([settings])
    skipped = make_settings(registry_storage={**S3, "regionendpoint": "http://127.0.0.1:9"},
                            registry_storage_check=False)
    s3check.check_storage([skipped])  # not asked at all


# --- settings and topology ---------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "words"), [
    ("registry_lb_mode", "tcp", "one of passthrough, terminate"),
    ("registry_lb_stats", "0.0.0.0:8404", "127.0.0.1:PORT"),
    ("registry_lb_drain_timeout", -1, "from 0 to 600"),
    ("registry_cache_port", 0, "from 1 to 65535"),
    ("registry_cache_db", 16, "from 0 to 15"),
    ("registry_cache_maxmemory", "lots", "like 64mb"),
    ("registry_internal_address", "has space", "DNS name or IP"),
    ("registry_storage_redirect_disabled", "yes", "True or False"),
    ("registry_cache_password", "plain", "{'env': NAME}"),
])
def test_bad_scale_out_settings(make_settings: Callable[..., Settings], key: str, value: Any,
                                words: str) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(**{key: value})
    assert str(error.value).startswith(f"reg-host-1: setting {key}=")
    assert words in str(error.value)


def test_cache_password_rules(make_settings: Callable[..., Settings],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_CACHE", "short")
    with pytest.raises(SettingsError, match="16 to 256 characters"):
        make_settings(registry_cache_password={"env": "RK_CACHE"})
    monkeypatch.setenv("RK_CACHE", "a" * 20 + " b")
    with pytest.raises(SettingsError) as error:
        make_settings(registry_cache_password={"env": "RK_CACHE"})
    assert "a" * 20 not in str(error.value)
    monkeypatch.setenv("RK_CACHE", "x" * 24)
    assert make_settings(registry_cache_password={"env": "RK_CACHE"}) \
        .registry_cache_password == Secret("x" * 24)


def test_internal_address_defaults_to_ssh_hostname(known: Any) -> None:
    from registry_kit.model import settings as settings_mod
    loaded = settings_mod.load("reg-2", {"ssh_hostname": "10.1.2.3"}, known=known, server=False)
    assert loaded.registry_internal_address == "10.1.2.3"
    loaded = settings_mod.load("reg-2", {}, known=known, server=False)
    assert loaded.registry_internal_address == "reg-2"


def _topology(make: Callable[..., Settings], *, servers: int = 2, lbs: int = 1,
              caches: int = 1, **data: Any) -> scaleout.Topology:
    import dataclasses

    def host(name: str, address: str, **extra: Any) -> Settings:
        return dataclasses.replace(make(**{"registry_storage": S3, **data, **extra}),
                                   host=name, registry_internal_address=address)

    return scaleout.Topology(
        servers=tuple(host(f"rep{i}", f"10.9.0.{10 + i}") for i in range(servers)),
        lbs=tuple(host(f"lb{i}", f"10.9.0.{20 + i}") for i in range(lbs)),
        caches=tuple(host(f"cache{i}", f"10.9.0.{30 + i}") for i in range(caches)))


def test_valid_topology(make_settings: Callable[..., Settings]) -> None:
    topology = _topology(make_settings)
    scaleout.validate(topology)
    assert [r.address for r in topology.replicas] == ["10.9.0.10", "10.9.0.11"]
    rotation = topology.rotation()
    assert rotation is not None and rotation.lb_hosts == ("lb0",)
    target = scaleout.cache_target(topology, "pw")
    assert target == scaleout.CacheTarget(addr="10.9.0.30:6379", password="pw", db=0)


def test_topology_refusals(make_settings: Callable[..., Settings]) -> None:
    import dataclasses

    with pytest.raises(SettingsError, match="rep0: setting registry_storage='filesystem'"):
        scaleout.validate(_topology(make_settings, registry_storage={"driver": "filesystem"}))
    with pytest.raises(SettingsError, match="one host in registry_cache"):
        scaleout.validate(_topology(make_settings, caches=2))
    with pytest.raises(SettingsError, match="nothing to terminate"):
        scaleout.validate(_topology(make_settings, registry_lb_mode="terminate",
                                    registry_tls_mode="none"))
    topology = _topology(make_settings)
    odd = dataclasses.replace(topology.servers[1], registry_domain="other.example")
    with pytest.raises(SettingsError, match=r"rep1: setting registry_domain='other\.example'"):
        scaleout.validate(dataclasses.replace(topology, servers=(topology.servers[0], odd)))
    loop = dataclasses.replace(topology.servers[0], registry_internal_address="127.0.0.1")
    with pytest.raises(SettingsError, match="not loopback"):
        scaleout.validate(dataclasses.replace(topology, servers=(loop, topology.servers[1])))
    named = dataclasses.replace(topology.caches[0], registry_internal_address="cache.lan")
    with pytest.raises(SettingsError, match="an IP address on the cache host"):
        scaleout.validate(dataclasses.replace(topology, caches=(named,)))
    with pytest.raises(SettingsError, match="needs hosts in registry_servers"):
        scaleout.validate(_topology(make_settings, servers=0))


def test_server_names_are_haproxy_safe() -> None:
    assert scaleout.server_name("reg 1@dc") == "reg_1_dc"


# --- rendering -----------------------------------------------------------------------------------

def test_replica_config_with_cache_and_no_redirect(make_settings: Callable[..., Settings]) -> \
        None:
    settings = make_settings(registry_storage=S3, registry_storage_redirect_disabled=True)
    target = scaleout.CacheTarget(addr="10.9.0.30:6379", password='p"w:1', db=2)
    config = yaml.safe_load(render_config(settings, "s", cache=target, drain_timeout=5))
    assert config["storage"]["cache"] == {"blobdescriptor": "redis"}
    assert config["storage"]["redirect"] == {"disable": True}
    assert config["storage"]["s3"]["secretkey"] == "lab-secret"
    assert config["redis"]["addr"] == "10.9.0.30:6379"
    assert config["redis"]["password"] == 'p"w:1'
    assert config["redis"]["db"] == 2
    assert config["http"]["draintimeout"] == "5s"
    plain = yaml.safe_load(render_config(make_settings(), "s"))
    assert "redis" not in plain and "cache" not in plain["storage"]
    assert "redirect" not in plain["storage"] and "draintimeout" not in plain["http"]


def test_haproxy_passthrough(make_settings: Callable[..., Settings]) -> None:
    topology = _topology(make_settings, registry_lb_stats="127.0.0.1:8404")
    text = loadbalancer.render(topology.lbs[0], topology)
    assert "mode tcp" in text and "ssl crt" not in text
    assert "server rep0 10.9.0.10:5000\n" in text and "server rep1 10.9.0.11:5000\n" in text
    assert "default-server check inter 2s fastinter 500ms downinter 500ms fall 2 rise 2 " \
        "check-ssl verify none" in text
    assert "http-check expect rstatus ^(200|401)$" in text
    assert "stats socket /run/haproxy/admin.sock" in text and "bind 127.0.0.1:8404" in text
    assert loadbalancer.render(topology.lbs[0], topology) == text  # deterministic


def test_haproxy_serves_the_replicas_web_page(make_settings: Callable[..., Settings]) -> None:
    """The web page on the LB's domain and address: TLS passthrough to every replica's page,
    each checked on /v2/ through the page (its registry down takes it out too)."""
    plain = _topology(make_settings)
    assert "webui" not in loadbalancer.render(plain.lbs[0], plain)
    for mode in ("passthrough", "terminate"):
        topology = _topology(make_settings, registry_webui_enabled=True, registry_lb_mode=mode)
        text = loadbalancer.render(topology.lbs[0], topology)
        frontend = text[text.index("frontend webui"):].split("\n\n")[0].splitlines()
        assert frontend == ["frontend webui", "    mode tcp", "    option tcplog",
                            "    bind *:5444", "    default_backend webui"]
        backend = text[text.index("\nbackend webui") + 1:].split("\n\n")[0].splitlines()
        assert backend[1:3] == ["    mode tcp", "    balance leastconn"]
        assert "    http-check send meth GET uri /v2/ ver HTTP/1.1 hdr Host " \
            "registry.example.internal" in backend
        assert backend[-3:] == [
            "    default-server check check-ssl verify none inter 2s fastinter 500ms "
            "downinter 500ms fall 2 rise 2",
            "    server rep0 10.9.0.10:5444", "    server rep1 10.9.0.11:5444"]


def test_haproxy_terminate(make_settings: Callable[..., Settings]) -> None:
    topology = _topology(make_settings, registry_lb_mode="terminate")
    text = loadbalancer.render(topology.lbs[0], topology)
    assert "mode http" in text
    assert "bind *:5000 ssl crt /etc/haproxy/registry-kit/registry.pem" in text
    assert "http-request set-header X-Forwarded-Proto https" in text
    # The client's own X-Forwarded-For is replaced: the registry believes its first address.
    assert "http-request set-header X-Forwarded-For %[src]" in text
    assert "option forwardfor" not in [line.strip() for line in text.splitlines()]
    assert "ssl verify required ca-file /etc/haproxy/registry-kit/ca.crt verifyhost " \
        "registry.example.internal" in text


def test_redis_conf(make_settings: Callable[..., Settings]) -> None:
    import dataclasses
    settings = dataclasses.replace(make_settings(), registry_internal_address="10.9.0.30")
    state = HostState(os=OSInfo(id="debian"))
    text = cache.render(settings, "pw-0123456789abcdef", cache.family(state))
    lines = set(text.splitlines())
    assert {"bind 10.9.0.30 127.0.0.1", "requirepass pw-0123456789abcdef",
            "maxmemory-policy allkeys-lru", "maxmemory 256mb", "port 6379",
            "protected-mode yes", 'save ""'} <= lines
    assert "pw-0123456789abcdef" not in cache.verify_command(settings)
