"""The parts of a fine-tune, in the order `ml.finetune.finetune` runs them: inputs (config, data,
split, rehearsal), the loop, interpolation back towards the start (the forgetting dial), and the
assessment (threshold, calibration, base, baseline, parent, forgetting)."""
