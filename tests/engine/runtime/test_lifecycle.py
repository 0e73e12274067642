"""A request's states, and the scheduler's decide → execute → update loop driven by hand over a
fake runner (no model, no tensors, no server): admission order, slot accounting, cancellation
and deadlines while queued, one request's failure, and a loop that cannot go on."""

from __future__ import annotations

import time

import numpy as np
import pytest
from runtime_fakes import BASE, CV, FakeRunner, FakeStream, job, scheduler, states, submit, turn

from qwen_tts_api.engine.errors import EngineUnavailable, GenerationError, SynthesisTimeout
from qwen_tts_api.engine.runtime.admission import Admission
from qwen_tts_api.engine.runtime.jobs import EngineConfig
from qwen_tts_api.engine.runtime.requests import FinishReason, IllegalTransition, Request, RequestState
from qwen_tts_api.engine.runtime.scheduler import Scheduler
from qwen_tts_api.engine.runtime.stream import END

S = RequestState


# --- the lifecycle ---


def test_a_request_moves_only_along_its_edges():
    request = Request(CV, job(1), FakeStream())
    assert request.state is S.WAITING and not request.holds_slot
    with pytest.raises(IllegalTransition):
        request.move_to(S.BETWEEN_PARTS)  # only a running live turn gets there
    request.move_to(S.RUNNING)
    request.move_to(S.RUNNING)  # its next segment
    request.move_to(S.WAITING_FOR_TEXT)
    request.move_to(S.BETWEEN_PARTS)
    assert request.holds_slot
    request.move_to(S.FINISHED, FinishReason.CANCELLED)
    assert request.finish_reason is FinishReason.CANCELLED and not request.holds_slot
    with pytest.raises(IllegalTransition):
        request.move_to(S.RUNNING)


def test_requests_have_ids_of_their_own():
    first, second = (Request(CV, job(1), FakeStream()) for _ in range(2))
    assert first.id != second.id


# --- the loop, by hand ---


def test_admission_in_arrival_order_and_slots_free_as_rows_end():
    sched, runner, admission = scheduler(max_batch=2)
    streams = [submit(sched, admission, CV, job(n)) for n in (1, 3, 2)]
    assert sched.receive(block=False)
    first, second, third = (r.id for r in sched.waiting)
    sched.iterate()
    assert runner.log[0] == ("prefill", CV, [first, second])  # joined together: one batched prefill
    assert states(sched) == {second: "running", third: "waiting"}  # the first ended in its first step
    assert streams[0].ended is END and sched.free_slots()[CV] == 1
    turn(sched)  # the third takes the freed slot
    assert ("prefill", CV, [third]) in runner.log
    while sched.active:
        turn(sched)
    assert all(s.ended is END for s in streams) and admission.active == 0
    assert all(np.concatenate([i for i in s.items if isinstance(i, np.ndarray)]).size for s in streams)


def test_segments_follow_each_other_in_the_same_slot():
    sched, runner, admission = scheduler(max_batch=1)
    stream = submit(sched, admission, CV, job(1, 1, 1))
    other = submit(sched, admission, CV, job(1))
    turn(sched)
    (request,) = sched.active
    assert request.index == 1 and request.state is S.RUNNING  # its second segment started at once
    turn(sched)
    turn(sched)
    assert stream.ended is END and other.ended is None  # the other waited for the slot
    turn(sched)
    assert other.ended is END


def test_a_request_cancelled_while_queued_never_starts():
    sched, runner, admission = scheduler(max_batch=1)
    submit(sched, admission, CV, job(5))
    queued = submit(sched, admission, CV, job(5))
    turn(sched)
    queued.cancel()
    turn(sched)
    assert queued.ended is END and not queued.started and admission.active == 1
    assert not any(entry[0] == "prefill" and len(entry[2]) > 1 for entry in runner.log)


def test_a_request_out_of_time_while_queued_gets_its_timeout():
    sched, runner, admission = scheduler(max_batch=1)
    submit(sched, admission, CV, job(5))
    late = submit(sched, admission, CV, job(5))
    late.deadline = time.monotonic() - 1
    turn(sched)
    assert isinstance(late.ended, SynthesisTimeout) and not late.started


def test_one_encoder_call_between_two_steps():
    sched, runner, admission = scheduler(max_batch=4)
    streams = [submit(sched, admission, BASE, job(3, reference=True)) for _ in range(3)]
    future = sched.call(lambda: "upload's clone prompt")
    turn(sched)  # the upload's task takes this turn's encoder call: nobody encodes inline
    assert future.result(timeout=0) == "upload's clone prompt"
    assert [e for e in runner.log if e[0] == "encode"] == []
    for _ in range(3):
        turn(sched)
    encodes = [i for i, e in enumerate(runner.log) if e[0] == "encode"]
    assert len(encodes) == 3
    steps_between = [runner.log[a:b] for a, b in zip(encodes, encodes[1:])]
    assert all(any(e[0] == "step" for e in between) for between in steps_between)
    assert all(s.started for s in streams)


def test_the_failure_of_one_request_leaves_the_others():
    sched, runner, admission = scheduler(max_batch=2)
    ok = submit(sched, admission, CV, job(2))
    broken = submit(sched, admission, CV, job(2))
    sched.receive(block=False)
    runner.fail_prefill.add(sched.waiting[1].id)
    sched.iterate()
    assert isinstance(broken.ended, GenerationError)
    turn(sched)
    assert ok.ended is END and admission.active == 0


def test_a_failed_step_fails_its_batch_and_the_next_request_is_served():
    sched, runner, admission = scheduler(max_batch=2)
    first = submit(sched, admission, CV, job(5))
    runner.fail_step = True
    turn(sched)
    assert isinstance(first.ended, GenerationError)
    runner.fail_step = False
    after = submit(sched, admission, CV, job(1))
    turn(sched)
    assert after.ended is END and sched.failure is None


def test_a_live_turn_between_parts_keeps_its_slot():
    sched, runner, admission = scheduler(max_batch=1)
    speaking = Request(CV, job(1), FakeStream())
    speaking.move_to(S.RUNNING)
    speaking.move_to(S.BETWEEN_PARTS)
    sched._active[speaking.id] = speaking  # as the loop leaves a turn whose part just ended
    waiting = submit(sched, admission, CV, job(1))
    turn(sched)
    assert sched.free_slots()[CV] == 0 and not waiting.started


def test_observers_see_each_step_and_can_leave():
    sched, runner, admission = scheduler()
    seen: list[int] = []
    remove = sched.add_step_observer(lambda step: seen.append(step.rows))
    submit(sched, admission, CV, job(2))
    submit(sched, admission, CV, job(1))
    turn(sched)
    remove()
    turn(sched)
    assert seen == [2]


def test_a_loop_that_cannot_go_on_answers_everyone():
    runner = FakeRunner()
    admission = Admission(8, workers=1)
    sched = Scheduler(runner, EngineConfig(max_batch=1, max_queue=8), admission)
    try:
        runner.fail_step, runner.cannot_renew = True, True
        running, queued = (submit(sched, admission, CV, job(50)) for _ in range(2))
        deadline = time.monotonic() + 10
        while (running.ended is None or queued.ended is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(running.ended, GenerationError)  # its own step failed
        assert isinstance(queued.ended, EngineUnavailable)
        assert sched.failure is not None and "device is gone" in sched.failure
        late = submit(sched, admission, CV, job(1))  # what arrives later is answered too
        task = sched.call(lambda: "never runs")
        while late.ended is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(late.ended, EngineUnavailable)
        with pytest.raises(EngineUnavailable):
            task.result(timeout=10)
        assert admission.active == 0
    finally:
        sched.close()


def test_decoding_that_failed_on_the_audio_thread_fails_its_request_and_its_row_leaves():
    sched, runner, admission = scheduler(max_batch=2)
    failing = submit(sched, admission, CV, job(5))
    other = submit(sched, admission, CV, job(5))
    turn(sched)
    request_id = next(r.id for r in sched.active if r.stream is failing)
    sched.audio_failed(request_id, RuntimeError("decoder exploded"))
    turn(sched)
    assert isinstance(failing.ended, GenerationError) and "decoding" in str(failing.ended)
    assert request_id not in runner.rows[CV] and other.ended is None  # dropped; the other goes on
    while other.ended is None:
        turn(sched)
    assert other.ended is END and admission.active == 0
