"""The scheduling policy alone, driven with plain objects: no model, no tensors, no server
(the way vLLM tests its scheduler). What joins, in which order, who waits, and the one
encoder call between two steps."""

from __future__ import annotations

from dataclasses import dataclass

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.runtime.policy import decide, free_slots, has_work

CV, BASE = ModelKind.CUSTOMVOICE, ModelKind.BASE


@dataclass
class Plain:
    """A waiting request as the policy sees it."""

    name: str
    kind: ModelKind = CV
    stopping: bool = False
    needs_encoder: bool = False
    might_start: bool = True
    ready: bool = True
    empty: bool = False


def names(requests) -> list[str]:
    return [r.name for r in requests]


def test_requests_join_in_arrival_order_while_their_batch_has_slots():
    waiting = [Plain("a"), Plain("b"), Plain("c")]
    decision = decide(waiting, {CV: 2}, tasks_waiting=0)
    assert names(decision.join[CV]) == ["a", "b"]  # c waits for a slot
    assert not decision.run_task and decision.encode is None and not decision.stopped


def test_each_model_counts_its_own_slots():
    waiting = [Plain("cv1"), Plain("b1", BASE), Plain("cv2"), Plain("b2", BASE)]
    decision = decide(waiting, {CV: 1, BASE: 2}, tasks_waiting=0)
    assert names(decision.join[CV]) == ["cv1"]
    assert names(decision.join[BASE]) == ["b1", "b2"]
    assert names(decision.joining) == ["cv1", "b1", "b2"]


def test_a_full_batch_admits_nobody():
    decision = decide([Plain("a")], {CV: 0}, tasks_waiting=0)
    assert decision.join == {} and not decision.stopped


def test_cancelled_or_expired_requests_leave_the_queue_even_without_a_slot():
    waiting = [Plain("gone", stopping=True), Plain("a"), Plain("late", BASE, stopping=True)]
    decision = decide(waiting, {CV: 0, BASE: 0}, tasks_waiting=0)
    assert names(decision.stopped) == ["gone", "late"]
    assert decision.join == {}


def test_a_request_not_ready_keeps_its_place_and_lets_others_pass():
    waiting = [Plain("turn", ready=False), Plain("b")]
    decision = decide(waiting, {CV: 1}, tasks_waiting=0)
    assert names(decision.join[CV]) == ["b"]  # the live turn still waits for its first clause


def test_a_turn_with_nothing_to_say_leaves_when_it_could_have_started():
    assert names(decide([Plain("silent", empty=True, ready=False)], {CV: 1}, 0).empty) == ["silent"]
    assert decide([Plain("silent", empty=True, ready=False)], {CV: 0}, 0).empty == []


def test_one_encoder_call_between_two_steps():
    waiting = [Plain("r1", BASE, needs_encoder=True), Plain("r2", BASE, needs_encoder=True), Plain("b", BASE)]
    decision = decide(waiting, {BASE: 3}, tasks_waiting=0)
    assert decision.encode is not None and decision.encode.name == "r1"
    assert names(decision.join[BASE]) == ["r1", "b"]  # r2 needs the encoders too: a later step


def test_a_queued_task_takes_the_encoders_first():
    waiting = [Plain("r1", BASE, needs_encoder=True), Plain("b", BASE)]
    decision = decide(waiting, {BASE: 2}, tasks_waiting=2)
    assert decision.run_task and decision.encode is None
    assert names(decision.join[BASE]) == ["b"]


def test_a_request_needing_the_encoders_without_a_slot_leaves_them_free():
    waiting = [Plain("r1", BASE, needs_encoder=True), Plain("r2", CV, needs_encoder=True)]
    decision = decide(waiting, {BASE: 0, CV: 1}, tasks_waiting=0)
    assert decision.encode is not None and decision.encode.name == "r2"


def test_free_slots_count_every_request_that_holds_one():
    # Two rows generating and a live turn between two parts (it keeps its slot) in CustomVoice.
    assert free_slots(4, [CV, BASE], [CV, CV, CV, BASE]) == {CV: 1, BASE: 3}


def test_the_loop_sleeps_only_when_nothing_can_progress():
    assert not has_work([], {CV: 1}, tasks_waiting=0)
    assert has_work([], {CV: 0}, tasks_waiting=1)
    assert has_work([Plain("a")], {CV: 1}, tasks_waiting=0)
    assert not has_work([Plain("a")], {CV: 0}, tasks_waiting=0)  # a slot frees when a row ends
    assert not has_work([Plain("turn", might_start=False)], {CV: 1}, tasks_waiting=0)  # text wakes it
    assert has_work([Plain("gone", stopping=True)], {CV: 0}, tasks_waiting=0)
