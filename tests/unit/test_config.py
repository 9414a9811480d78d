"""Settings and URLs: where the URL comes from, clear errors, masked secrets."""

from __future__ import annotations

import re
import ssl

import pytest

from janitor import config
from janitor.redis_io import connection
from tests.support import ROOT


class TestUrlSources:
    def test_order(self) -> None:
        """JANITOR_REDIS_URL wins over REDIS_URL, which wins over UPSTASH_REDIS_URL and Celery's own."""
        env = {"REDIS_URL": "redis://b", "UPSTASH_REDIS_URL": "rediss://c", "JANITOR_REDIS_URL": "redis://a"}
        assert config.find_redis_url(env) == ("redis://a", "JANITOR_REDIS_URL")
        del env["JANITOR_REDIS_URL"]
        assert config.find_redis_url(env) == ("redis://b", "REDIS_URL")
        del env["REDIS_URL"]
        assert config.find_redis_url(env) == ("rediss://c", "UPSTASH_REDIS_URL")

    def test_celery_backend_only_when_redis(self) -> None:
        """CELERY_RESULT_BACKEND counts only when it names a Redis server, not a database backend."""
        assert config.find_redis_url({"CELERY_RESULT_BACKEND": "db+postgresql://x"}) == ("", "")
        assert config.find_redis_url({"CELERY_RESULT_BACKEND": "redis://h/1"}) == (
            "redis://h/1",
            "CELERY_RESULT_BACKEND",
        )


class TestBrokerUrl:
    def test_broker_and_results_apart(self) -> None:
        """Celery's two URLs on two databases: results swept on the backend's, the broker read on the broker's."""
        s = config.load({"CELERY_BROKER_URL": "redis://:pw@h/0", "CELERY_RESULT_BACKEND": "redis://:pw@h/1"})
        assert (s.redis_url, s.redis_url_source) == ("redis://:pw@h/1", "CELERY_RESULT_BACKEND")
        assert (s.broker_url, s.broker_url_source) == ("redis://:pw@h/0", "CELERY_BROKER_URL")
        assert s.broker_apart
        assert s.masked_broker_url == "redis://:***@h/0"
        assert s.for_broker().redis_url == "redis://:pw@h/0"

    def test_janitor_broker_url_wins(self) -> None:
        env = {"JANITOR_BROKER_URL": "redis://b/2", "CELERY_BROKER_URL": "redis://c/0", "REDIS_URL": "redis://a/1"}
        s = config.load(env)
        assert (s.broker_url, s.broker_url_source) == ("redis://b/2", "JANITOR_BROKER_URL")

    def test_same_server_when_the_broker_is_not_redis_or_unset(self) -> None:
        """An AMQP broker, or none named: the broker checks look at the results' Redis, as before."""
        for env in (
            {"REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "amqp://guest@rabbit//"},
            {"REDIS_URL": "redis://a/0"},
        ):
            s = config.load(env)
            assert (s.broker_url, s.broker_url_source) == ("redis://a/0", "REDIS_URL")
            assert not s.broker_apart
            assert s.for_broker() is s


class TestValidation:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("JANITOR_RESULT_TTL", "abc"),
            ("JANITOR_RESULT_TTL", "0"),
            ("JANITOR_SCAN_COUNT", "1"),
            ("JANITOR_DRY_RUN", "maybe"),
            ("JANITOR_LOG_LEVEL", "loud"),
        ],
    )
    def test_bad_value_names_the_setting(self, name: str, value: str) -> None:
        """A bad value stops start-up with one line naming the setting and the value."""
        with pytest.raises(config.ConfigError) as info:
            config.load({name: value})
        message = str(info.value)
        assert name in message
        assert "\n" not in message

    def test_port_error_names_the_variable_set(self) -> None:
        """A bad PORT (read while JANITOR_METRICS_PORT is unset) is reported as PORT, the variable the user set."""
        with pytest.raises(config.ConfigError) as info:
            config.load({"PORT": "notaport"})
        assert str(info.value).startswith("invalid setting PORT='notaport'")
        assert "JANITOR_METRICS_PORT='notaport'" not in str(info.value)
        with pytest.raises(config.ConfigError) as info:
            config.load({"PORT": "8080", "JANITOR_METRICS_PORT": "nope"})
        assert str(info.value).startswith("invalid setting JANITOR_METRICS_PORT='nope'")

    def test_env_values_are_typed(self) -> None:
        """Env strings become typed settings."""
        settings = config.load({"JANITOR_RESULT_TTL": "3600", "JANITOR_DRY_RUN": "true", "JANITOR_KEY_PREFIX": "app"})
        assert (settings.result_ttl, settings.dry_run, settings.key_prefix) == (3600, True, "app")

    def test_password_never_in_repr(self) -> None:
        """Printing settings never shows the URL."""
        settings = config.load({"REDIS_URL": "redis://u:hunter2@h:6379/0"})
        assert "hunter2" not in repr(settings)
        assert settings.masked_url == "redis://u:***@h:6379/0"


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis://:p@ss@w0rd@h:1/0", "redis://:***@h:1/0"),
            ("rediss://default:abc@x.upstash.io:6379", "rediss://default:***@x.upstash.io:6379"),
            ("redis://h:6379/2", "redis://h:6379/2"),
            ("redis://h/0?password=zz&db=1", "redis://h/0?password=***&db=1"),
        ],
    )
    def test_masking(self, url: str, expected: str) -> None:
        """Passwords are masked, including ones containing '@' and ones passed as a query parameter."""
        assert connection.mask_url(url) == expected

    def test_celery_tls_spellings(self) -> None:
        """rediss:// takes Celery's ssl_* query options, CERT_* or lower-case spellings."""
        kw = connection.client_kwargs(
            "rediss://h:6380/3?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
            socket_timeout=1,
        )
        assert (kw["ssl_cert_reqs"], kw["ssl_ca_certs"], kw["ssl_certfile"], kw["db"]) == (
            ssl.CERT_REQUIRED,
            "/ca.pem",
            "/c.pem",
            3,
        )

    def test_tls_verifies_by_default(self) -> None:
        """Unlike kombu, a bare rediss:// URL verifies the server certificate."""
        assert connection.client_kwargs("rediss://h", socket_timeout=1)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert connection.tls_verifies("rediss://h") is True
        assert connection.tls_verifies("rediss://h?ssl_cert_reqs=none") is False
        assert connection.tls_verifies("redis://h") is None

    @pytest.mark.parametrize(
        "url", ["http://h", "redis://h/abc", "redis://h?ssl_cert_reqs=required", "rediss://h?ssl_cert_reqs=sometimes"]
    )
    def test_unusable_urls_are_refused_clearly(self, url: str) -> None:
        """Wrong scheme, db or TLS options give a URLError, not a late connection failure."""
        with pytest.raises(connection.URLError):
            connection.client_kwargs(url, socket_timeout=1)

    def test_unix_socket_with_virtual_host(self) -> None:
        """Celery's socket:// form with virtual_host selects the db."""
        kw = connection.client_kwargs("socket:///run/redis.sock?virtual_host=4", socket_timeout=1)
        assert (kw["unix_socket_path"], kw["db"]) == ("/run/redis.sock", 4)


class TestUnknownVariables:
    def test_typo_gets_the_nearest_setting(self) -> None:
        """A mistyped JANITOR_ variable is reported with the setting it most resembles; known ones are not."""
        env = {
            "JANITOR_RESULTTTL": "5",
            "JANITOR_SWEEP_INTERVALS": "60",
            "janitor_result_ttl": "5",
            "JANITOR_ZZQQXX": "1",
            "JANITOR_RESULT_TTL": "5",
            "JANITOR_REDIS_URL": "redis://h",
            "REDIS_URL": "redis://h",
            "PORT": "8080",
        }
        assert config.unknown_variables(env) == [
            ("JANITOR_RESULTTTL", "JANITOR_RESULT_TTL"),
            ("JANITOR_SWEEP_INTERVALS", "JANITOR_SWEEP_INTERVAL"),
            ("JANITOR_ZZQQXX", ""),
            ("janitor_result_ttl", "JANITOR_RESULT_TTL"),
        ]

    def test_every_setting_is_known(self) -> None:
        """Each Settings field (but the URL's bookkeeping) is one known variable, so none of them ever warns."""
        known = set(config.known_variables())
        for name in config.Settings.model_fields:
            assert (f"JANITOR_{name.upper()}" in known) is (not name.endswith("_url_source")), name

    def test_documented_and_test_suite_variables_do_not_warn(self) -> None:
        """Every JANITOR_ variable the README's tables, deploy files and the tests set is known: no false warning."""
        sources = [ROOT / "Dockerfile"]
        sources += [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
        # test_config and test_cli hold deliberate typos, and so does the README's prose.
        sources += [p for p in (ROOT / "tests").rglob("*.py") if p.name not in {"test_config.py", "test_cli.py"}]
        texts = [p.read_text(errors="replace") for p in sources]
        texts += [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
        names = re.compile(r"\bJANITOR_[A-Z0-9_]*[A-Z0-9]\b")
        used = {m for text in texts for m in names.findall(text)}
        assert len(used) > 30
        assert config.unknown_variables(dict.fromkeys(used, "1")) == []
