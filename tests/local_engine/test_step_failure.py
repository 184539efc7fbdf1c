"""A step whose forward pass or sampler raises ends that step's requests and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from transformers import LlamaForCausalLM as HFLlama
from transformers import PreTrainedTokenizerBase

from local_engine import LLMEngine, SamplingParams, StepFailed
from local_engine.scheduler import SchedulerOutput
from tests.local_engine.test_engine import hf_model, make_engine, prompts, reference  # noqa: F401 - fixture

POISON = 4242  # a token id whose presence in a step makes the injected fault fire


def fail_steps_with(engine: LLMEngine, token_id: int) -> Callable[[], int]:
    """Make the runner raise for every step that runs a sequence holding ``token_id``; returns the fault count."""
    run, faults = engine.runner.run, [0]

    def faulty(step: SchedulerOutput):  # type: ignore[no-untyped-def]
        if any(token_id in item.seq.token_ids for item in step.scheduled):
            faults[0] += 1
            raise RuntimeError("injected: out of memory")
        return run(step)

    engine.runner.run = faulty  # type: ignore[method-assign]
    return lambda: faults[0]


def test_a_failed_step_aborts_its_requests_frees_their_blocks_and_the_engine_serves_on(
    hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase  # noqa: F811
) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer, max_num_seqs=1)  # one at a time: the second request waits
    faults = fail_steps_with(engine, POISON)
    good = prompts(1)[0]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    engine.add_request("poisoned", [*good, POISON], params)
    engine.add_request("waiting", good, params)
    with pytest.raises(StepFailed) as caught:
        engine.step()
    assert caught.value.request_ids == ["poisoned"] and faults() == 1
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            finished[output.request_id] = output
    assert list(finished) == ["waiting"]  # it was not in the failed step: it is served, unchanged
    assert finished["waiting"].outputs[0].token_ids == reference(hf_model, good, 6)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
