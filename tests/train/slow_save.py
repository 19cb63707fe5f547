"""Test instrumentation, loaded as sitecustomize by the SIGKILL-mid-save test only: at the step
named by LLAVA_MOSLORA_TEST_SLOW_SAVE the Trainer pauses inside its checkpoint save (after the
optimizer state is written, before the trainer state), so the test can kill the run there."""
import os
import time

if os.environ.get("LLAVA_MOSLORA_TEST_SLOW_SAVE"):
    import transformers.trainer as trainer_module

    step, marker = os.environ["LLAVA_MOSLORA_TEST_SLOW_SAVE"].split(":", 1)
    original = trainer_module.Trainer._save_rng_state

    def _save_rng_state(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == int(step):
            open(marker, "a").close()
            time.sleep(600)

    trainer_module.Trainer._save_rng_state = _save_rng_state
