"""Key names: what the janitor recognises, and what it refuses to."""

from __future__ import annotations

import pytest

from janitor.celery_model.keyspace import Kind, Layout, result_prefix


class TestResultPrefix:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [("", b""), ("myapp", b"myapp_"), ("myapp:", b"myapp:"), ("a-", b"a-"), ("a.", b"a."), ("a_", b"a_")],
    )
    def test_separator_like_celery(self, given: str, expected: bytes) -> None:
        """A prefix gets Celery's automatic '_' unless it already ends in one of ':_-.'."""
        assert result_prefix(given) == expected


class TestClassify:
    layout = Layout()

    @pytest.mark.parametrize(
        ("key", "kind", "ident"),
        [
            (
                b"celery-task-meta-0f25ba21-1c7e-4c2a-9d27-1b2c3d4e5f60",
                Kind.TASK,
                b"0f25ba21-1c7e-4c2a-9d27-1b2c3d4e5f60",
            ),
            (b"celery-taskset-meta-g1", Kind.GROUP, b"g1"),
            (b"celery-taskset-meta-g1.j", Kind.CHORD_JOIN, b"g1"),
            (b"celery-taskset-meta-g1.s", Kind.CHORD_SIZE, b"g1"),
            (b"celery-taskset-meta-g1.t", Kind.CHORD_TOTAL, b"g1"),
            (b"celery-taskset-meta-g1.d", Kind.CHORD_DEDUP, b"g1"),
            (b"celery-taskset-meta-g1.c", Kind.CHORD_CLAIM, b"g1"),
            (b"6aa568a5-b4a5-3ce4-a974-0eaa25ab21b3.reply.celery.pidbox", Kind.PIDBOX_REPLY, b""),
        ],
    )
    def test_celery_names(self, key: bytes, kind: Kind, ident: bytes) -> None:
        """Every key family Celery writes is recognised with its id."""
        assert self.layout.classify(key) == (kind, ident)

    @pytest.mark.parametrize(
        "key",
        [
            b"celery",
            b"celery\x06\x163",
            b"unacked",
            b"unacked_index",
            b"_kombu.binding.celery",
            b"celery-beat-x",
            b"app:celery-task-meta-1",
            b"xcelery-task-meta-1",
            b".reply.celery.pidbox",
        ],
    )
    def test_broker_and_foreign_keys_are_other(self, key: bytes) -> None:
        """Queues, unacked, bindings and keys that merely contain Celery's names are not ours."""
        assert self.layout.classify(key)[0] is Kind.OTHER

    @pytest.mark.parametrize(
        "key",
        [
            b"celery-task-meta-",
            b"celery-task-meta-a*b",
            b"celery-task-meta-a\nb",
            b"celery-task-meta-\xff\xfe",
            b"celery-task-meta-[x]",
            b"celery-task-meta-celery-task-meta-1",
            b"celery-taskset-meta-.j",
            b"celery-task-meta-" + b"x" * 300,
        ],
    )
    def test_names_no_celery_client_writes_are_malformed(self, key: bytes) -> None:
        """A Celery prefix with an empty, binary, glob or oversized id is flagged, not treated as a result."""
        assert self.layout.classify(key)[0] is Kind.MALFORMED

    def test_global_keyprefix(self) -> None:
        """With global_keyprefix='myapp' only 'myapp_'-prefixed keys are results; bare ones belong to another app."""
        layout = Layout.for_prefixes("myapp")
        assert layout.classify(b"myapp_celery-task-meta-1") == (Kind.TASK, b"1")
        assert layout.classify(b"celery-task-meta-1")[0] is Kind.OTHER

    def test_broker_prefix_limits_reply_lists(self) -> None:
        """Reply lists of another broker prefix are left to their own janitor."""
        layout = Layout.for_prefixes(broker_key_prefix="myapp")
        assert layout.classify(b"myappabc.reply.celery.pidbox")[0] is Kind.PIDBOX_REPLY
        assert layout.classify(b"otherabc.reply.celery.pidbox")[0] is Kind.OTHER
