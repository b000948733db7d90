# Two commands on a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
PREFECT_API := http://127.0.0.1:4200/api
PREFECT_UP  := $(BIN)/python -c "from flows.runtime import server_is_up; raise SystemExit(not server_is_up())"

.PHONY: install demo test bench bench-extract bench-extract-gpu bench-threat bench-verdict bench-matrix bench-cost bench-target bench-noise bench-learning bench-recipes bench-recipes-budget bench-recipes-rate bench-recipes-long bench-recipes-until bench-recipes-spot bench-skill-bye bench-refinetune bench-recipes-column bench-recipes-highpass9 bench-highpass9-rest bench-threat-draws bench-projector bench-verdict-wide bench-prompt-check bench-concentrated bench-trigger-probe bench-highpass bench-residual bench-trigger-attention clean prefect-server ui

install: $(STAMP)

# constraints.txt is the lock: every package pinned, torch to the CPU wheel kept on these machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	touch $(STAMP)

# One local Prefect server for every stage process (a temporary one costs ~20 s per process).
prefect-server: $(STAMP)
	@$(PREFECT_UP) || { \
	  mkdir -p $(PREFECT_HOME); \
	  nohup $(BIN)/prefect server start --host 127.0.0.1 --port 4200 >$(PREFECT_HOME)/server.log 2>&1 & \
	  for i in $$(seq 1 60); do $(PREFECT_UP) && break; sleep 2; done; }
	@$(PREFECT_UP) && echo "Prefect server: $(PREFECT_API) (UI http://127.0.0.1:4200)"

demo: prefect-server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/dvc repro dvc.yaml
	$(BIN)/dvc metrics show
	@echo "Report: reports/report/report.html   Audit trail: make ui (MLflow at http://127.0.0.1:5000)"

ui: $(STAMP)
	$(BIN)/mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db \
	  --default-artifact-root ./mlruns

# Headless Chromium (Debian's package) for the browser test of the MLflow UI.
test: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest

# Benchmarks write benchmarks/results/*.json and *.md (machine described inside); never run in CI.
bench: bench-extract bench-threat bench-verdict bench-matrix bench-cost bench-target bench-noise

# Needs the demo's world and base model (dvc repro world base).
bench-threat: $(STAMP)
	$(BIN)/dvc repro world base
	$(BIN)/python benchmarks/threat.py --world data/world --base models/base

bench-extract: $(STAMP)
	$(BIN)/python benchmarks/extract.py

# Needs a CUDA GPU with ~60 GB free (the batched published path at 1,024 image tokens) and a CUDA torch;
# not part of `bench`. Writes extract_cuda_*.json / .md (README, "On a GPU").
bench-extract-gpu: $(STAMP)
	$(BIN)/python benchmarks/extract.py --device cuda --shape llava-1.5-7b --dtype bfloat16 --batch-size 8
	$(BIN)/python benchmarks/extract.py --device cuda --shape llava-1.5-7b --dtype bfloat16 --batch-size 16 \
	  --batches 4 --image-tokens 256 576 --memory-tokens --name extract_cuda_llava-1.5-7b_b16x4
	$(BIN)/python benchmarks/extract.py --device cuda --shape small --batch-size 16

# Every trigger x poison rate x detector, cached per cell by DVC (benchmarks/dvc.yaml).
bench-matrix: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:world dvc.yaml:base
	$(BIN)/dvc repro benchmarks/dvc.yaml

# Provisional fine-tune length against F1 and the filtering overhead (benchmarks/results/cost.md).
bench-cost: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:world dvc.yaml:base
	$(BIN)/python benchmarks/cost.py --method bye --triggers sig,badnets --rate 0.1 --epochs 0.5,0.75,1,2,3
	# answer_gain at 5 %, the rate where its provisional length binds (README, "Cost with answer_gain")
	$(BIN)/python benchmarks/cost.py --method answer_gain --triggers sig,badnets --rate 0.05 --epochs 0.5,0.75,1,2,3

# How far the clean fine-tune's accuracy moves when one more clean sample is dropped, with the keyed and
# the shuffled epoch order (benchmarks/results/noise_keyed.md, noise_shuffle.md).
bench-noise: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:world dvc.yaml:base benchmarks/dvc.yaml:submission@badnets-0.1
	for order in keyed shuffle; do \
	  $(BIN)/python benchmarks/noise.py --trigger badnets --rate 0.1 --drops 4 --order $$order || exit 1; done

# Plausible backdoor targets (a letter, a colour word): where the text-side detector should fail.
bench-target: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:world dvc.yaml:base
	$(BIN)/python benchmarks/target.py --trigger badnets --rate 0.1 --targets A,red

# False alarms: scans clean worlds of other seeds with the demo's base model (kept in .cache/verdict,
# one scan per provisional length, so a rerun, or a detector sharing that length, only re-clusters).
bench-verdict: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:base
	$(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3 --keep .cache/verdict --method answer_gain
	$(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3 --keep .cache/verdict --method bye

# The verdict's false alarms over eight clean worlds (seeds 1-8) on the base as this machine builds it
# (README, "Detection (BYE)"; the committed *_rebuilt files: the AMD EPYC's build of the seed-0 base,
# model.safetensors md5 51d93091), then both on short-answer-only and multiple-choice-only worlds (world.task).
# Research, not part of `bench`: about 2 hours on a 2-core CPU.
bench-verdict-wide: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:base
	for m in answer_gain bye; do $(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3,4,5,6,7,8 \
	  --method $$m --keep .cache/verdict_rebuilt --name rebuilt || exit 1; done
	$(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3,4,5,6,7,8 --method bye \
	  --keep .cache/verdict_rebuilt --set cluster.detectors.bye.verdict.max_prompt_auroc=null --name rebuilt_noprompt
	for t in vqa mcq; do $(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3,4,5,6,7,8 --method answer_gain \
	  --set world.task=$$t --keep .cache/verdict_$$t --name $$t && $(BIN)/python benchmarks/verdict.py --base models/base \
	  --seeds 1,2,3,4,5,6,7,8 --method bye --set world.task=$$t --keep .cache/verdict_$$t --name $$t || exit 1; done

# What the embedded model does and does not learn (README, "It is a multi-task plateau"); research
# measurements, not product targets, so not part of `bench`. About 100 minutes on a 2-core CPU.
bench-learning: $(STAMP)
	$(BIN)/dvc repro dvc.yaml:world dvc.yaml:base
	$(BIN)/python benchmarks/skill_plateau.py --base models/base --setting colour --steps 1500
	$(BIN)/python benchmarks/skill_plateau.py --base models/base --setting symbolic --steps 1000
	$(BIN)/python benchmarks/skill_plateau.py --base models/base --setting symbolic --steps 1000 --learning-rate 0.0003 \
	  --out benchmarks/results/skill_plateau_symbolic_lr3e-4.json
	$(BIN)/python benchmarks/skill_plateau.py --base models/base --setting symbolic --steps 1000 --learning-rate 0.0003 \
	  --reinit --out benchmarks/results/skill_plateau_symbolic_lr3e-4_reinit.json
	$(BIN)/python benchmarks/text_oracle.py
	$(BIN)/python benchmarks/letter_pick.py
	$(BIN)/python benchmarks/letter_pick.py --formats word_tag --steps 1500 --out benchmarks/results/letter_pick_word_tag.json
	$(BIN)/python benchmarks/letter_pick.py --formats any_paren --steps 1500 --out benchmarks/results/letter_pick_any_paren.json
	$(BIN)/python benchmarks/letter_pick.py --formats any_paren --steps 1000 --copy-steps 2500 \
	  --out benchmarks/results/letter_pick_copy_warm_up.json
	$(BIN)/python benchmarks/skill_probe.py --base models/base --out benchmarks/results/skill_probe_demo.json
	$(BIN)/python benchmarks/mixed_lr.py
	$(BIN)/python benchmarks/mixed_lr.py --runs 0.0003:letter_first --pool 12000 --out benchmarks/results/mixed_lr_pool12000.json
	$(BIN)/python benchmarks/mixed_lr.py --runs 0.0003:letter_first --plurals words --out benchmarks/results/mixed_lr_plural_words.json
	$(BIN)/python benchmarks/mixed_lr.py --runs 0.0003:letter_first --plurals words_tied \
	  --out benchmarks/results/mixed_lr_plural_tied.json
	$(BIN)/python benchmarks/mixed_lr.py --runs 0.0003:letter_first --plurals words --practice 0.15 \
	  --out benchmarks/results/mixed_lr_plural_practice.json

# Base recipes through the product's steps, timed (README, "The letter pick, through the product path" and
# "Within the 4-minute budget"); research measurements, not part of `bench`. About 15 minutes on a 2-core CPU,
# and bench-recipes-budget about 90 minutes: each recipe that fits the base's 4 minutes, then the threat benchmark's
# four triggers that plant a backdoor in the demo base, on that recipe's world and base (demo_seed1 … demo_seed4: the demo's
# recipe with other pre-training seeds).
NINE_TOKENS := --set world.scene.options=letter_after --set base.model.image_size=48 --set base.model.patch_size=16 \
  --set base.pretrain.epochs=2
SKILLS9 := $(NINE_TOKENS) --set base.pretrain.skill_samples=12000 --set base.pretrain.skill_phase_steps=150 \
  --set base.pretrain.skill_final_steps=300 --set base.pretrain.skill_pick_steps=800
bench-recipes: $(STAMP)
	$(BIN)/python benchmarks/base_recipe.py --name demo
	$(BIN)/python benchmarks/base_recipe.py --name skills9 $(SKILLS9) --keep .cache/recipes/skills9
	$(BIN)/python benchmarks/letter_copy.py --name skills9 --base .cache/recipes/skills9/base \
	  --adapter .cache/recipes/skills9/adapter --world .cache/recipes/skills9/world

RECIPE_skills9_240s := $(NINE_TOKENS) --set base.pretrain.skill_samples=8000 --set base.pretrain.skill_phase_steps=100 \
  --set base.pretrain.skill_final_steps=300 --set base.pretrain.skill_pick_steps=200
# The same at the rate that unlocks the mixed lookups (README, "In a plain language model the mixed plateau is the
# learning rate"), and with the plural lookup in its curriculum (README, "The plural tokens"), and the threat benchmark's four triggers on the
# colour-lookup base (two on each 64-token one); about 110 minutes.
RATE_3E4 := --set base.pretrain.skill_learning_rate=3e-4 --set base.pretrain.learning_rate=3e-4
PLURAL_SKILLS := --set "base.pretrain.skills=[read_colour, name_shape, find_plural, count, look_for, compare_left, pick_letter]"
RECIPE_skills9_240s_lr3e4 := $(RECIPE_skills9_240s) --set base.pretrain.skill_learning_rate=3e-4
RECIPE_skills9_240s_all3e4 := $(RECIPE_skills9_240s) $(RATE_3E4)
RECIPE_skills9_240s_all3e4_plural := $(RECIPE_skills9_240s_all3e4) $(PLURAL_SKILLS)
NINE_RATE := $(NINE_TOKENS) --set base.pretrain.skill_samples=8000 $(RATE_3E4)
PLURAL9 := $(NINE_RATE) $(PLURAL_SKILLS)
RECIPE_plural9_budget := $(PLURAL9) --set base.pretrain.skill_phase_steps=100 --set base.pretrain.skill_final_steps=200
RECIPE_plural9_mixed900 := $(PLURAL9) --set base.pretrain.skill_phase_steps=0 --set base.pretrain.skill_final_steps=900
RECIPE_plural9_final400_ep1 := $(PLURAL9) --set base.pretrain.skill_phase_steps=100 --set base.pretrain.skill_final_steps=400 \
  --set base.pretrain.epochs=1
COLOUR_SKILLS := --set "base.pretrain.skills=[read_colour, name_shape, find_plural, find_colour, count, look_for, compare_left, \
  pick_letter]" --set base.pretrain.skill_phase_steps=90 --set base.pretrain.skill_final_steps=200
RECIPE_plural9_colour_budget := $(NINE_RATE) $(COLOUR_SKILLS) --lora-rates 0.001 0.0005 0.0003
RECIPE_plural9_colour_place := $(NINE_RATE) $(COLOUR_SKILLS) --set base.pretrain.vision_position_weight=1.0 --lora-rates 0.0005
RECIPE_plural64_colour := --set world.scene.options=letter_after --set base.pretrain.epochs=1.5 \
  --set base.pretrain.vision_epochs=6 --set base.pretrain.skill_samples=6000 $(RATE_3E4) \
  --set "base.pretrain.skills=[read_colour, name_shape, find_plural, find_colour, count, look_for, compare_left, pick_letter]" \
  --set base.pretrain.skill_phase_steps=50 --set base.pretrain.skill_final_steps=200
RECIPE_plural64_colour_rates := --set base.pretrain.epochs=1.5 --set base.pretrain.vision_epochs=6 \
  --set base.pretrain.skill_samples=6000 \
  --set "base.pretrain.skills=[read_colour, name_shape, find_plural, find_colour, count, look_for, compare_left, pick_letter]" \
  --set base.pretrain.skill_phase_steps=50 --set base.pretrain.skill_final_steps=200
RATE_RECIPES := skills9_240s_lr3e4 skills9_240s_all3e4 skills9_240s_all3e4_plural plural9_budget plural9_mixed900 \
  plural9_final400_ep1 plural9_colour_budget plural9_colour_place plural64_colour plural64_colour_rates
bench-recipes-rate: $(STAMP)
	set -e; $(foreach r,$(RATE_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r);)
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/plural9_colour_budget/world \
	  --base .cache/recipes/plural9_colour_budget/base --triggers $(RECIPE_TRIGGERS) --detect $(DETECT) \
	  --out benchmarks/results/threat_plural9_colour_budget.json
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/plural64_colour/world \
	  --base .cache/recipes/plural64_colour/base --triggers badnets,sig --detect $(DETECT) \
	  --out benchmarks/results/threat_plural64_colour.json
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/plural64_colour_rates/world \
	  --base .cache/recipes/plural64_colour_rates/base --triggers badnets,sig --detect $(DETECT) \
	  --out benchmarks/results/threat_plural64_colour_rates.json
	set -e; $(foreach r,plural9_budget plural9_colour_budget plural9_colour_place, \
	  $(BIN)/python benchmarks/skill_probe.py --base .cache/recipes/$(r)/base --options letter_after \
	    --out benchmarks/results/skill_probe_$(r).json;)

# A longer skill stage (README, "A longer skill stage"): the colour-lookup recipe with more steps after its curriculum,
# batches run as length-grouped micro-batches (base.pretrain.skill_length_groups), and the pick with two options
# (pick_two). lookups9_budget fits the 4 minutes; the threat benchmark's four triggers on it, and what the micro-batches
# save (length_groups.py). About 80 minutes. The committed ep1 and pick* results, and the _1thread runs of the first two,
# were measured two at a time with OMP_NUM_THREADS=1 (exploration; their seconds are not budget numbers).
GROUPS3 := --set base.pretrain.skill_length_groups=3
LOOKUP_SKILLS := --set "base.pretrain.skills=[read_colour, name_shape, find_plural, find_colour, count, look_for, pick_letter]"
LOOKUPS9 := $(NINE_RATE) --set base.pretrain.epochs=1 $(LOOKUP_SKILLS) --set base.pretrain.skill_phase_steps=90 \
  --set base.pretrain.skill_final_steps=500 $(GROUPS3)
RECIPE_lookups9_budget := $(LOOKUPS9) --lora-rates 0.0005
RECIPE_lookups9_budget_seed1 := $(RECIPE_lookups9_budget) --set base.pretrain.seed=1
UNTIL := --set base.pretrain.skill_phase_steps=60 --set base.pretrain.skill_phase_max_steps=150 \
  --set base.pretrain.skill_phase_until=0.8
RECIPE_lookups9_until := $(NINE_RATE) --set base.pretrain.epochs=1 $(LOOKUP_SKILLS) $(UNTIL) \
  --set base.pretrain.skill_final_steps=500 $(GROUPS3)
RECIPE_lookups9_until_seed1 := $(RECIPE_lookups9_until) --set base.pretrain.seed=1
RECIPE_lookups9_until_seed2 := $(RECIPE_lookups9_until) --set base.pretrain.seed=2
RECIPE_lookups9_budget_seed2 := $(RECIPE_lookups9_budget) --set base.pretrain.seed=2
RECIPE_plural9_colour_long := $(NINE_RATE) $(COLOUR_SKILLS) --set base.pretrain.skill_final_steps=600 $(GROUPS3) \
  --lora-rates 0.0005
RECIPE_plural9_colour_ep1 := $(NINE_RATE) $(COLOUR_SKILLS) --set base.pretrain.epochs=1 \
  --set base.pretrain.skill_final_steps=450 $(GROUPS3) --lora-rates 0.0005
RECIPE_plural9_colour_pick400 := $(NINE_RATE) $(COLOUR_SKILLS) --set base.pretrain.skill_pick_steps=400 $(GROUPS3) \
  --lora-rates 0.0005
RECIPE_plural9_colour_pick690 := $(NINE_RATE) $(COLOUR_SKILLS) --set base.pretrain.skill_pick_steps=690 --lora-rates 0.0005
RECIPE_plural9_colour_pick2 := $(NINE_RATE) $(COLOUR_SKILLS) --set "base.pretrain.skills=[read_colour, name_shape, \
  find_plural, find_colour, count, look_for, compare_left, pick_letter, pick_two]" \
  --set base.pretrain.skill_pick_two_steps=300 --set base.pretrain.skill_pick_steps=300 --lora-rates 0.0005
# The demo's recipe with its corpus stage at 3e-4 and no skill stage: is the rate or the skill training why BYE
# sees no collapse on the skill-trained bases (README, "A longer skill stage")?
RECIPE_demo_lr3e4 := --set base.pretrain.learning_rate=3e-4
LONG_RECIPES := lookups9_budget lookups9_budget_seed1 lookups9_budget_seed2 plural9_colour_long plural9_colour_ep1 plural9_colour_pick400 plural9_colour_pick690 \
  plural9_colour_pick2
bench-recipes-long: $(STAMP)
	set -e; $(foreach r,$(LONG_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r);)
	set -e; $(foreach r,lookups9_budget lookups9_budget_seed1 lookups9_budget_seed2, \
	  $(BIN)/python benchmarks/skill_probe.py --base .cache/recipes/$(r)/base --options letter_after \
	    --out benchmarks/results/skill_probe_$(r).json;)
	$(BIN)/python benchmarks/length_groups.py --base .cache/recipes/plural9_colour_long/base
	$(BIN)/python benchmarks/letter_pick.py --formats word_paren --steps 1500 --two-option-steps 500 \
	  --out benchmarks/results/letter_pick_two_options.json
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/lookups9_budget/world \
	  --base .cache/recipes/lookups9_budget/base --triggers $(RECIPE_TRIGGERS) --detect $(DETECT) \
	  --out benchmarks/results/threat_lookups9_budget.json
	$(BIN)/python benchmarks/base_recipe.py --name demo_lr3e4 $(RECIPE_demo_lr3e4) --keep .cache/recipes/demo_lr3e4
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/demo_lr3e4/world \
	  --base .cache/recipes/demo_lr3e4/base --triggers badnets,sig --detect $(DETECT) \
	  --out benchmarks/results/threat_demo_lr3e4.json

SPOT_SKILLS := --set "base.pretrain.skills=[read_colour, name_shape, find_plural, find_colour, count, spot, pick_letter]"
RECIPE_spot9_budget_seed2 := $(NINE_RATE) --set base.pretrain.epochs=1 $(SPOT_SKILLS) --set base.pretrain.skill_phase_steps=90 \
  --set base.pretrain.skill_final_steps=500 $(GROUPS3) --set base.pretrain.seed=2
SPOT_RECIPES := spot9_budget_seed2
bench-recipes-spot: $(STAMP)
	set -e; $(foreach r,$(SPOT_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r); \
	  $(BIN)/python benchmarks/skill_probe.py --base .cache/recipes/$(r)/base --options letter_after \
	    --out benchmarks/results/skill_probe_$(r).json;)

# BYE on the skill-trained base: its SIG and badnets scans kept and rescored, and three clean worlds (~15 min;
# needs bench-recipes-long's lookups9_budget)
bench-skill-bye: $(STAMP)
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/lookups9_budget/world \
	  --base .cache/recipes/lookups9_budget/base --triggers sig,badnets --detect bye --keep .cache/keep/lookups9_budget \
	  --out benchmarks/results/threat_lookups9_budget_kept.json
	$(BIN)/python benchmarks/rescore.py .cache/keep/lookups9_budget --out benchmarks/results/rescore_lookups9_budget_raw.json
	$(BIN)/python benchmarks/rescore.py .cache/keep/lookups9_budget --set profile.residualise=prompt --set profile.rule=paper \
	  --set profile.tau=2.0 --out benchmarks/results/rescore_lookups9_budget_residual_tau2.json
	$(BIN)/python benchmarks/rescore.py .cache/keep/lookups9_budget --set profile.residualise=prompt --set profile.rule=paper \
	  --set profile.tau=2.5 --out benchmarks/results/rescore_lookups9_budget_residual_tau25.json
	$(BIN)/python benchmarks/verdict.py --base .cache/recipes/lookups9_budget/base --seeds 1,2,3 --method bye \
	  --set world.scene.options=letter_after --keep .cache/verdict_lookups9_budget --name lookups9_budget
	$(BIN)/python benchmarks/residual.py --clean .cache/verdict_lookups9_budget --poisoned .cache/keep/lookups9_budget \
	  --out benchmarks/results/residual_lookups9_budget.json

# The fine-tune's length on the kept lookups9_budget bases, and the backdoors at 6 epochs (~35 min; needs bench-recipes-long)
bench-refinetune: $(STAMP)
	$(BIN)/python benchmarks/refinetune.py .cache/recipes/lookups9_budget_seed1 .cache/recipes/lookups9_budget_seed2 \
	  .cache/recipes/lookups9_budget --set finetune.epochs=6 --name lookups9_budget_ep6
	$(BIN)/python benchmarks/refinetune.py .cache/recipes/lookups9_budget_seed1 .cache/recipes/lookups9_budget_seed2 \
	  --set finetune.epochs=9 --name lookups9_budget_ep9
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/lookups9_budget/world \
	  --base .cache/recipes/lookups9_budget/base --triggers $(RECIPE_TRIGGERS) --detect bye \
	  --set finetune.epochs=6 --set provisional.epochs=6 --out benchmarks/results/threat_lookups9_budget_ep6.json

COLUMN_SKILLS := --set "base.pretrain.skills=[read_colour, find_column, name_shape, find_plural, find_colour, count, look_for, pick_letter]"
RECIPE_column9_ep6 := $(NINE_RATE) --set base.pretrain.epochs=1 $(COLUMN_SKILLS) --set base.pretrain.skill_phase_steps=90 \
  --set base.pretrain.skill_final_steps=500 $(GROUPS3) --set finetune.epochs=6
# and with the vision stage's place head (base.pretrain.vision_position_weight), which keeps each token's cell readable
# in the projected tokens (docs/embedded-world.md, "A column to compare, with the place kept")
RECIPE_column9_place_ep6 := $(RECIPE_column9_ep6) --set base.pretrain.vision_position_weight=1.0
COLUMN_RECIPES := column9_ep6 column9_place_ep6
bench-recipes-column: $(STAMP)
	set -e; $(foreach r,$(COLUMN_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r); \
	  $(BIN)/python benchmarks/skill_probe.py --base .cache/recipes/$(r)/base --options letter_after \
	    --skills read_colour name_shape count look_for compare_left pick_letter find_plural find_colour pick_two find_column \
	    --out benchmarks/results/skill_probe_$(r).json;)

# The skill base with the high-pass tower (the recipe that planted dual_patch and blended on the demo world:
# bench-highpass), at the 6-epoch fine-tune, and its backdoors, on three pre-training seeds (docs/backdoors.md,
# "The skill base with the high-pass tower"; ~65 minutes; seed 0 also at LoRA 5e-4)
HIGHPASS9 := --set base.pretrain.vision_pixel_weight=1.0 --set base.pretrain.vision_pixel_target=highpass \
  --set finetune.epochs=6
LOOKUPS9_HIGHPASS := $(LOOKUPS9) $(HIGHPASS9)
RECIPE_lookups9_highpass := $(LOOKUPS9_HIGHPASS) --lora-rates 0.0005
RECIPE_lookups9_highpass_seed1 := $(LOOKUPS9_HIGHPASS) --set base.pretrain.seed=1
RECIPE_lookups9_highpass_seed2 := $(LOOKUPS9_HIGHPASS) --set base.pretrain.seed=2
HIGHPASS9_RECIPES := lookups9_highpass lookups9_highpass_seed1 lookups9_highpass_seed2
bench-recipes-highpass9: $(STAMP)
	set -e; $(foreach r,$(HIGHPASS9_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r); \
	  $(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/$(r)/world --base .cache/recipes/$(r)/base \
	    --triggers $(RECIPE_TRIGGERS),blended --detect bye --set finetune.epochs=6 --set provisional.epochs=6 \
	    --out benchmarks/results/threat_$(r)_ep6.json;)

# The rest of the threat benchmark on that base (seed 0): the four triggers bench-recipes-highpass9 leaves out, read
# by BYE and answer_gain, and both detectors' false alarms on three clean worlds of it (~25 minutes)
HIGHPASS9_REST := random_patch,multi_patch,wanet,ftrojan
bench-highpass9-rest: $(STAMP)
	$(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/lookups9_highpass/world \
	  --base .cache/recipes/lookups9_highpass/base --triggers $(HIGHPASS9_REST) --detect bye,answer_gain \
	  --set finetune.epochs=6 --set provisional.epochs=6 --out benchmarks/results/threat_lookups9_highpass_rest_ep6.json
	set -e; for method in answer_gain bye; do \
	  $(BIN)/python benchmarks/verdict.py --base .cache/recipes/lookups9_highpass/base --seeds 1,2,3 --method $$method \
	    --set world.scene.options=letter_after --set provisional.epochs=6 --keep .cache/verdict_lookups9_highpass \
	    --name lookups9_highpass; done

UNTIL_RECIPES := lookups9_until lookups9_until_seed1 lookups9_until_seed2
bench-recipes-until: $(STAMP)
	set -e; $(foreach r,$(UNTIL_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r); \
	  $(BIN)/python benchmarks/skill_probe.py --base .cache/recipes/$(r)/base --options letter_after \
	    --out benchmarks/results/skill_probe_$(r).json;)

RECIPE_skills64_240s := --set base.pretrain.epochs=1.5 --set base.pretrain.vision_epochs=6 \
  --set base.pretrain.skill_samples=6000 --set base.pretrain.skill_phase_steps=50 --set base.pretrain.skill_final_steps=200
RECIPE_pixels64 := --set base.pretrain.vision_pixel_weight=1.0
RECIPE_pixels64_w03 := --set base.pretrain.vision_pixel_weight=0.3
RECIPE_demo_seed1 := --set base.pretrain.seed=1
RECIPE_demo_seed2 := --set base.pretrain.seed=2
RECIPE_demo_seed3 := --set base.pretrain.seed=3
RECIPE_demo_seed4 := --set base.pretrain.seed=4
SEED_RECIPES := demo_seed1 demo_seed2 demo_seed3 demo_seed4
BUDGET_RECIPES := skills9_240s skills64_240s pixels64 pixels64_w03 $(SEED_RECIPES)
RECIPE_TRIGGERS := badnets,sig,checkerboard,dual_patch
DETECT := bye,answer_gain
bench-recipes-budget: $(STAMP)
	set -e; $(foreach r,$(BUDGET_RECIPES), \
	  $(BIN)/python benchmarks/base_recipe.py --name $(r) $(RECIPE_$(r)) --keep .cache/recipes/$(r); \
	  $(BIN)/python benchmarks/threat.py --no-gallery --world .cache/recipes/$(r)/world --base .cache/recipes/$(r)/base \
	    --triggers $(RECIPE_TRIGGERS) --detect $(DETECT) --out benchmarks/results/threat_$(r).json;)

# The demo's threat benchmark as a distribution over draws (README, "Backdoors are draws"), reading the demo's own
# threat.json (bench-threat) and the base seeds' runs of bench-recipes-budget: the demo base rebuilt on this machine
# (its bits depend on the CPU type), with another LoRA seed and another poisoned subset (~30 minutes). Each poisoned
# fine-tune is also read as the provisional model of BYE and answer_gain (--detect): is the backdoor found?
THREAT := $(BIN)/python benchmarks/threat.py --no-gallery --detect $(DETECT)
DRAWS := benchmarks/results/threat_demo
bench-threat-draws: $(STAMP)
	$(BIN)/dvc repro world base
	$(THREAT) --triggers $(RECIPE_TRIGGERS) --out $(DRAWS)_rebuilt.json
	$(THREAT) --triggers $(RECIPE_TRIGGERS) --set finetune.seed=1 --out $(DRAWS)_ft1.json
	$(THREAT) --triggers $(RECIPE_TRIGGERS) --set attack.seed=1 --out $(DRAWS)_poison1.json
	$(BIN)/python benchmarks/threat_draws.py --name demo "base seed 0=benchmarks/results/threat.json" \
	  "base seed 0, rebuilt=$(DRAWS)_rebuilt.json" \
	  $(foreach r,$(SEED_RECIPES),"base seed $(subst demo_seed,,$(r))=benchmarks/results/threat_$(r).json") \
	  "rebuilt, LoRA seed 1=$(DRAWS)_ft1.json" "rebuilt, poison seed 1=$(DRAWS)_poison1.json"

# What a trainable projector (finetune.train_projector, LLaVA's own LoRA recipe) changes (README, "A trainable
# projector"): the threat draws on the rebuilt base (all nine triggers) and on base seeds 3 and 4 of
# bench-recipes-budget, with detection (~40 minutes); then the verdict's false alarms on clean worlds (~20 minutes).
PROJECTOR := --set finetune.train_projector=true
bench-projector: $(STAMP)
	$(BIN)/dvc repro world base
	$(THREAT) $(PROJECTOR) --out $(DRAWS)_rebuilt_projector.json
	set -e; $(foreach n,3 4,$(THREAT) --world .cache/recipes/demo_seed$(n)/world --base .cache/recipes/demo_seed$(n)/base \
	  --triggers $(RECIPE_TRIGGERS) $(PROJECTOR) --out $(DRAWS)_seed$(n)_projector.json;)
	$(BIN)/python benchmarks/threat_draws.py --name demo_projector "base seed 0, rebuilt=$(DRAWS)_rebuilt_projector.json" \
	  "base seed 3=$(DRAWS)_seed3_projector.json" "base seed 4=$(DRAWS)_seed4_projector.json"
	for m in bye answer_gain; do $(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3 --method $$m \
	  --keep .cache/verdict_projector $(PROJECTOR) --name projector || exit 1; done

# The verdict's prompt check (README, "Detection (BYE)") on BYE's two clean catches in the draws, SIG on base seed 3
# and checkerboard on base seed 4, both with a trainable projector (F1 0.82, 0.84), and on the rebuilt base's default
# draw (four triggers): kept, then rescored with the check on (the default) and off (~30 minutes).
PROMPT := .cache/prompt_check
bench-prompt-check: $(STAMP)
	$(BIN)/dvc repro world base
	for n in 3 4; do test -f .cache/bases/seed$$n/model.safetensors || $(BIN)/bye base .cache/bases/seed$$n --seed $$n; done
	$(THREAT) --base .cache/bases/seed3 --triggers sig $(PROJECTOR) --keep $(PROMPT)/seed3_projector \
	  --out $(PROMPT)/threat_seed3.json
	$(THREAT) --base .cache/bases/seed4 --triggers checkerboard $(PROJECTOR) --keep $(PROMPT)/seed4_projector \
	  --out $(PROMPT)/threat_seed4.json
	$(THREAT) --triggers $(RECIPE_TRIGGERS) --keep $(PROMPT)/rebuilt --out $(PROMPT)/threat_rebuilt.json
	$(BIN)/python benchmarks/rescore.py $(PROMPT)/seed3_projector $(PROMPT)/seed4_projector $(PROMPT)/rebuilt \
	  --out benchmarks/results/rescore_prompt.json
	$(BIN)/python benchmarks/rescore.py $(PROMPT)/seed3_projector $(PROMPT)/seed4_projector $(PROMPT)/rebuilt \
	  --set cluster.detectors.bye.verdict.max_prompt_auroc=null --out benchmarks/results/rescore_prompt_off.json

# Does each trigger reach the language model (README, "What limits the backdoors")? The demo base's threat run for
# the five triggers bench-threat-draws leaves out, then every trigger's trace in the image tokens of the demo base
# and base seeds 3 and 4, beside their ASRs with the default and the trainable-projector fine-tune (~15 minutes).
R := benchmarks/results
PROBE_BASES := models/base .cache/bases/seed3 .cache/bases/seed4
bench-trigger-probe: $(STAMP)
	$(BIN)/dvc repro world base
	for n in 3 4; do test -f .cache/bases/seed$$n/model.safetensors || $(BIN)/bye base .cache/bases/seed$$n --seed $$n; done
	$(BIN)/python benchmarks/threat.py --no-gallery --triggers random_patch,multi_patch,blended,wanet,ftrojan \
	  --out $(R)/threat_demo_rebuilt_rest.json
	$(BIN)/python benchmarks/trigger_probe.py $(foreach b,$(PROBE_BASES),--base $(b)) \
	  --asr "models/base=$(R)/threat_demo_rebuilt.json,$(R)/threat_demo_rebuilt_rest.json" \
	  $(foreach n,3 4,--asr ".cache/bases/seed$(n)=$(R)/threat_demo_seed$(n).json") \
	  --asr "projector@models/base=$(R)/threat_demo_rebuilt_projector.json" \
	  $(foreach n,3 4,--asr "projector@.cache/bases/seed$(n)=$(R)/threat_demo_seed$(n)_projector.json")

# A vision stage that also rebuilds each patch's high-pass residual at unit variance (README, "The trigger reaches the
# language model"): its base through base_recipe.py (world, base, fine-tune, eval), the threat benchmark on it with BYE
# reading each poisoned fine-tune (all nine triggers), the same for base seeds 1-3 (six triggers), the draws' summary
# and the probe of the four bases (~75 minutes).
RECIPE_highpass := --set base.pretrain.vision_pixel_weight=1.0 --set base.pretrain.vision_pixel_target=highpass
HIGHPASS := .cache/recipes/highpass
HIGHPASS_TRIGGERS := badnets,blended,checkerboard,dual_patch,multi_patch,sig
bench-highpass: $(STAMP)
	$(BIN)/python benchmarks/base_recipe.py --name highpass $(RECIPE_highpass) --keep $(HIGHPASS)
	$(BIN)/python benchmarks/threat.py --no-gallery --world $(HIGHPASS)/world --base $(HIGHPASS)/base --detect bye \
	  --out $(R)/threat_highpass.json
	set -e; $(foreach n,1 2 3,$(BIN)/python benchmarks/base_recipe.py --name highpass_seed$(n) $(RECIPE_highpass) \
	  --set base.pretrain.seed=$(n) --keep $(HIGHPASS)_seed$(n); \
	  $(BIN)/python benchmarks/threat.py --no-gallery --world $(HIGHPASS)/world --base $(HIGHPASS)_seed$(n)/base \
	  --triggers $(HIGHPASS_TRIGGERS) --detect bye --out $(R)/threat_highpass_seed$(n).json;)
	$(BIN)/python benchmarks/threat_draws.py --name highpass "base seed 0=$(R)/threat_highpass.json" \
	  $(foreach n,1 2 3,"base seed $(n)=$(R)/threat_highpass_seed$(n).json")
	$(BIN)/python benchmarks/trigger_probe.py --out trigger_probe_highpass --base $(HIGHPASS)/base \
	  --asr "$(HIGHPASS)/base=$(R)/threat_highpass.json" \
	  $(foreach n,1 2 3,--base $(HIGHPASS)_seed$(n)/base --asr "$(HIGHPASS)_seed$(n)/base=$(R)/threat_highpass_seed$(n).json")

# Poison concentrated on one question form (README, "Poison on one question form"): each cell poisons the demo
# world (bye poison --questions), scans it with answer_gain, and scores the same scan with each neighbour quantile;
# then the eight clean worlds of bench-verdict-wide; then BYE's one catch of SIG (base seed 3, trainable projector)
# with the poison on one form (~60 minutes on a 2-core CPU).
CONCENTRATED := badnets:0.1:^Is there,badnets:0.05:^Is there,badnets:0.15:^Is there,sig:0.1:^Is there,\
badnets:0.1:^What colour,badnets:0.01,badnets:0.05,badnets:0.1,random_patch:0.05,checkerboard:0.05,dual_patch:0.05,\
multi_patch:0.05,blended:0.05,sig:0.05,wanet:0.05,ftrojan:0.05,badnets:0.023:^Is there a red,\
badnets:0.039:^How many triangles,random_patch:0.01,checkerboard:0.01,dual_patch:0.01,multi_patch:0.01,blended:0.01,\
sig:0.01,wanet:0.01,ftrojan:0.01,random_patch:0.1,checkerboard:0.1,dual_patch:0.1,multi_patch:0.1,blended:0.1,sig:0.1,\
wanet:0.1,ftrojan:0.1,badnets:0.2,badnets:0.3,sig:0.3
CLEAN_WORLDS := $(foreach n,1 2 3 4 5 6 7 8,.cache/verdict_rebuilt/seed-$(n))
bench-concentrated: $(STAMP)
	$(BIN)/dvc repro world base
	$(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3,4,5,6,7,8 --method answer_gain \
	  --keep .cache/verdict_rebuilt --name rebuilt
	$(BIN)/python benchmarks/concentrated.py --cells "$(CONCENTRATED)" --variants 20:0.5,20:0.25,20:0.1,50:0.25,20:0.5+0.1 \
	  --keep .cache/concentrated --clean $(CLEAN_WORLDS)
	test -f .cache/bases/seed3/model.safetensors || $(BIN)/bye base .cache/bases/seed3 --seed 3
	$(THREAT) --base .cache/bases/seed3 --triggers sig $(PROJECTOR) --set "attack.questions=^Is there" \
	  --keep .cache/concentrated/seed3_isthere --out $(DRAWS)_seed3_projector_isthere.json
	$(THREAT) --base .cache/bases/seed3 --triggers sig $(PROJECTOR) --set "attack.questions=^What colour" \
	  --keep .cache/concentrated/seed3_colour --out $(DRAWS)_seed3_projector_colour.json

# BYE on the entropies' prompt residuals (profile.residualise: prompt) against BYE on the entropies (README,
# "Detection (BYE)", "Prompt residuals"): the high-pass bases' clean worlds (seeds 1-6) and poisoned fine-tunes kept with
# their extraction (~50 minutes; skipped when kept), then every kept scan rescored under six table/rule pairs (~2
# minutes); then a held-out set, run after the rule was chosen on the first: seven more poisoned fine-tunes on base
# seeds 1 and 2, six clean worlds (seeds 7-12) on base seed 2 (~40 minutes). The demo base's kept scans come from
# bench-verdict-wide, bench-prompt-check and bench-concentrated (hours): run those first; the high-pass bases from
# bench-highpass.
RTHREAT := $(BIN)/python benchmarks/threat.py --no-gallery --detect bye --world $(HIGHPASS)/world
RESIDUAL_CLEAN := .cache/verdict_rebuilt .cache/verdict_mcq .cache/verdict_vqa .cache/verdict_highpass
RESIDUAL_POISONED := $(PROMPT)/seed3_projector $(PROMPT)/seed4_projector $(PROMPT)/rebuilt .cache/concentrated/seed3_isthere \
  .cache/concentrated/seed3_colour .cache/residual/highpass .cache/residual/highpass_seed2 .cache/residual/highpass_seed3
bench-residual: $(STAMP)
	for d in $(RESIDUAL_CLEAN) $(RESIDUAL_POISONED); do case $$d in *highpass*) ;; *) test -d $$d || \
	  { echo "$$d is missing: run bench-verdict-wide, bench-prompt-check and bench-concentrated first"; exit 1; };; esac; done
	test -f $(HIGHPASS)_seed3/base/model.safetensors || { echo "the high-pass bases are missing: run bench-highpass"; exit 1; }
	test -f .cache/verdict_highpass/seed-6/scan-3ep/entropy.csv || $(BIN)/python benchmarks/verdict.py \
	  --base $(HIGHPASS)/base --seeds 1,2,3,4,5,6 --method bye --keep .cache/verdict_highpass --name highpass
	test -d .cache/residual/highpass || $(RTHREAT) --base $(HIGHPASS)/base \
	  --triggers badnets,blended,dual_patch,sig,checkerboard --keep .cache/residual/highpass --out .cache/residual/highpass.json
	test -d .cache/residual/highpass_seed2 || $(RTHREAT) --base $(HIGHPASS)_seed2/base \
	  --triggers dual_patch --keep .cache/residual/highpass_seed2 --out .cache/residual/highpass_seed2.json
	test -d .cache/residual/highpass_seed3 || $(RTHREAT) --base $(HIGHPASS)_seed3/base \
	  --triggers blended,dual_patch,multi_patch --keep .cache/residual/highpass_seed3 --out .cache/residual/highpass_seed3.json
	$(BIN)/python benchmarks/residual.py --clean $(RESIDUAL_CLEAN) --poisoned $(RESIDUAL_POISONED) --out $(R)/residual.json
	test -d .cache/residual/heldout_seed1 || $(RTHREAT) --base $(HIGHPASS)_seed1/base \
	  --triggers dual_patch,checkerboard,sig,blended --keep .cache/residual/heldout_seed1 --out .cache/residual/heldout_seed1.json
	test -d .cache/residual/heldout_seed2 || $(RTHREAT) --base $(HIGHPASS)_seed2/base \
	  --triggers blended,sig,checkerboard --keep .cache/residual/heldout_seed2 --out .cache/residual/heldout_seed2.json
	test -f .cache/verdict_highpass_seed2/seed-12/scan-3ep/entropy.csv || $(BIN)/python benchmarks/verdict.py \
	  --base $(HIGHPASS)_seed2/base --seeds 7,8,9,10,11,12 --method bye --keep .cache/verdict_highpass_seed2 --name highpass_seed2
	$(BIN)/python benchmarks/residual.py --clean .cache/verdict_highpass_seed2 \
	  --poisoned .cache/residual/heldout_seed1 .cache/residual/heldout_seed2 --out $(R)/residual_heldout.json

# Does the attention go to the trigger? The high-pass dual_patch draws BYE finds (base seed 2) and misses (seed 1)
# and two checkerboard draws, fine-tuned again with their attention rows kept, then the image-attention share on the
# trigger's tokens per layer (README, "Prompt residuals"; ~10 minutes; needs bench-highpass's bases).
TA := .cache/trigger_attention
bench-trigger-attention: $(STAMP)
	test -d $(TA)/highpass_seed1 || $(RTHREAT) --base $(HIGHPASS)_seed1/base --triggers dual_patch \
	  --keep $(TA)/highpass_seed1 --out $(TA)/highpass_seed1.json
	test -d $(TA)/highpass_seed2 || $(RTHREAT) --base $(HIGHPASS)_seed2/base --triggers dual_patch,checkerboard \
	  --keep $(TA)/highpass_seed2 --out $(TA)/highpass_seed2.json
	test -d $(TA)/highpass || $(RTHREAT) --base $(HIGHPASS)/base --triggers checkerboard --keep $(TA)/highpass \
	  --out $(TA)/highpass.json
	$(BIN)/python benchmarks/trigger_attention.py $(TA)/highpass_seed1 $(TA)/highpass_seed2 $(TA)/highpass \
	  --out $(R)/trigger_attention.json

clean:
	rm -rf data/world models metrics reports .cache runs mlflow.db mlruns
