"""Test instrumentation, loaded as sitecustomize by the mid-save tests only: at the step named by
LLAVA_MOSLORA_TEST_SLOW_SAVE="STEP:MARKER[:SECONDS]" the Trainer pauses inside its checkpoint save
(after the optimizer state is written, before the trainer state) for SECONDS (600 by default),
after touching MARKER, so the test can signal or kill the run there."""
import os
import time

# Only in the ranks (torchrun sets LOCAL_RANK): the launcher, the launch checks and the study
# would otherwise each import transformers.trainer at start-up, seconds apiece.
if os.environ.get("LLAVA_MOSLORA_TEST_SLOW_SAVE") and "LOCAL_RANK" in os.environ:
    import transformers.trainer as trainer_module

    step, marker, *pause = os.environ["LLAVA_MOSLORA_TEST_SLOW_SAVE"].split(":")
    original = trainer_module.Trainer._save_rng_state

    def _save_rng_state(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == int(step):
            open(marker, "a").close()
            time.sleep(float(pause[0]) if pause else 600)

    trainer_module.Trainer._save_rng_state = _save_rng_state
