"""The conversation key (runners/kv_prefix.py) and the slot planner (runners/kv_conversations.py):
pure, no loop, no process."""

from __future__ import annotations

from modelrunner.runners.kv_conversations import (
    Entry,
    Index,
    SlotTable,
    expected_tokens,
    plausible,
)
from modelrunner.runners.kv_prefix import Prefix, parse, prefix_of, with_slot

SYSTEM = {"role": "system", "content": "You are terse. " * 20}


def chat(*turns: str) -> Prefix:
    messages = [SYSTEM, *({"role": "user", "content": t} for t in turns)]
    prefix = prefix_of({"messages": messages})
    assert prefix is not None
    return prefix


def table(slots: int = 4, ram: int | None = None) -> SlotTable:
    t = SlotTable(ram_budget_bytes=ram, bytes_per_token=1)
    t.resize(slots)
    return t


class TestPrefix:
    def test_a_next_turn_shares_the_whole_chain_of_the_last(self) -> None:
        """Turn k's chain is a prefix of turn k+1's: the whole of it is common."""
        one, two = chat("a"), chat("a", "b")
        assert one.common(two) == one.size
        assert two.hashes[: len(one.hashes)] == one.hashes

    def test_conversations_with_one_system_prompt_share_only_it(self) -> None:
        assert 0 < chat("a").common(chat("b")) < chat("a").size

    def test_key_order_and_head_members_matter_as_they_render(self) -> None:
        """Sorted keys: the client's member order changes nothing; tools change the chain."""
        a = prefix_of({"messages": [{"role": "user", "content": "x"}]})
        b = prefix_of({"messages": [{"content": "x", "role": "user"}]})
        tools = prefix_of({"messages": [{"role": "user", "content": "x"}], "tools": [1]})
        assert a == b
        assert tools is not None
        assert a is not None
        assert tools.common(a) == 0

    def test_raw_prompts_chain_in_chunks_and_odd_bodies_have_no_key(self) -> None:
        long = prefix_of({"prompt": "x" * 3000})
        assert long is not None
        assert len(long.hashes) == 3
        assert prefix_of({"prompt": ["a", "b"]}) is None
        assert prefix_of({"input": "x"}) is None
        assert parse(b"[1]") is None
        assert parse(b"{") is None

    def test_id_slot_is_added_without_a_parse(self) -> None:
        assert parse(with_slot(b'{"a": 1}\n', 3)) == {"a": 1, "id_slot": 3}
        assert parse(with_slot(b"{}", 0)) == {"id_slot": 0}

    def test_the_manifest_copy_round_trips_and_junk_is_refused(self) -> None:
        p = chat("a")
        assert Prefix.from_json(p.to_json()) == p
        assert Prefix.from_json({"hashes": ["a"], "chars": []}) is None


class TestSlotTable:
    def test_a_single_conversation_never_saves_on_its_own_turns(self) -> None:
        """Its slot is its own: no save, no restore, the same slot every turn."""
        t = table()
        plan = t.take(chat("a"), None)
        t.release(plan.slot or 0, chat("a"), tokens=100, ok=True)
        again = t.take(chat("a", "b"), None)
        assert (again.slot, again.saves, again.restore, again.source) == (
            plan.slot,
            (),
            None,
            "slot",
        )

    def test_another_conversation_saves_the_displaced_one_first(self) -> None:
        t = table()
        a = t.take(chat("a"), None)
        t.release(a.slot or 0, chat("a"), tokens=100, ok=True)
        b = t.take(chat("b"), None)
        assert [s.prefix for s in b.saves] == [chat("a")]
        assert b.saves[0].tokens == 100
        t.release(b.slot or 0, chat("b"), tokens=90, ok=True)
        # a is in RAM now (llama-server moved it there when b started): no restore from disk.
        assert t.take(chat("a", "c"), None).source == "ram"

    def test_a_displaced_conversation_the_disk_nearly_has_is_not_saved_again(self) -> None:
        """An entry sharing all but a tenth of it: no save (the same prompts again, a short
        turn); one that misses more: saved."""
        index = Index("m")
        long_turn = "x" * (chat("a").size // 5)
        for turn, saved in (("a",), True), (("a", "b"), False), (("a", "b", long_turn), True):
            t = table()
            plan = t.take(chat(*turn), index)
            t.release(plan.slot or 0, chat(*turn), tokens=100, ok=True)
            assert [s.prefix for s in t.take(chat("other"), index).saves] == (
                [chat(*turn)] if saved else []
            )
            if turn == ("a",):
                index.add(Entry("ea", chat("a"), 1000, 100, 1.0))
        assert t.dirty() == []

    def test_a_conversation_only_the_disk_has_is_restored_into_its_slot(self) -> None:
        t = table(ram=0)
        index = Index("m")
        index.add(Entry("e1", chat("a"), 1000, 100, 1.0))
        plan = t.take(chat("a", "b"), index)
        assert plan.restore is not None
        assert plan.restore.digest == "e1"
        assert plan.source == "disk"

    def test_the_ram_budget_decides_what_llama_server_still_holds(self) -> None:
        t = table(ram=150)
        for turn in ("a", "b", "c"):  # each displaces the last; 100 bytes each in RAM
            plan = t.take(chat(turn), None)
            t.release(plan.slot or 0, chat(turn), tokens=100, ok=True)
        index = Index("m")
        index.add(Entry("ea", chat("a"), 1000, 100, 1.0))
        assert t.take(chat("a", "x"), index).source == "disk"  # beyond the budget: from disk

    def test_busy_slots_are_never_chosen_and_all_busy_leaves_the_choice(self) -> None:
        t = table(slots=2)
        one = t.take(chat("a"), None)
        two = t.take(chat("b"), None)
        assert {one.slot, two.slot} == {0, 1}
        assert t.take(chat("c"), None).slot is None

    def test_a_request_llama_server_places_itself_still_saves_what_it_displaces(self) -> None:
        """Anthropic's /v1/messages drops id_slot: no slot is chosen, the idle ones are saved."""
        t = table()
        a = t.take(chat("a"), None)
        t.release(a.slot or 0, chat("a"), tokens=10, ok=True)
        plan = t.take(chat("b"), None, choose=False)
        assert plan.slot is None
        assert [s.prefix for s in plan.saves] == [chat("a")]
        assert t.dirty() == []

    def test_a_failed_answer_leaves_nothing_to_save(self) -> None:
        t = table()
        plan = t.take(chat("a"), None)
        t.release(plan.slot or 0, chat("a"), tokens=None, ok=False)
        assert t.take(chat("b"), None).saves == ()
        assert t.dirty() == []


class TestIndex:
    def test_a_longer_save_replaces_the_entries_it_contains(self) -> None:
        index = Index("m")
        index.add(Entry("e1", chat("a"), 10, 1, 1.0))
        assert index.add(Entry("e2", chat("a", "b"), 20, 2, 2.0)) == ["e1"]
        found = index.best(chat("a", "b", "c"))
        assert found is not None
        assert found[0].digest == "e2"

    def test_the_count_bound_names_the_least_recently_used(self) -> None:
        index = Index("m")
        for i, turn in enumerate("abc"):
            index.add(Entry(f"e{turn}", chat(turn), 10, 1, float(i)))
        index.touch("ea", 9.0)
        assert index.beyond(2) == ["eb"]


def test_expected_tokens_read_both_families_usage() -> None:
    assert expected_tokens({"prompt_tokens": 87, "completion_tokens": 2}) == 88
    usage = {"input_tokens": 1, "cache_read_input_tokens": 52, "output_tokens": 2}
    assert expected_tokens(usage) == 54
    assert expected_tokens(None) is None
    assert plausible(88, 88)
    assert plausible(89, None)
    assert not plausible(0, None)
    assert not plausible(54, 88)
