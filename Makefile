# `make run` replays the shipped sample on the live dashboard; `make test` runs the suite. Both set up everything first.
VENV    ?= .venv
PYTHON  ?= python3
# DEVICE=gpu installs paddlepaddle-gpu instead of the CPU wheel; it sticks once chosen.
DEVICE  ?= $(if $(wildcard $(VENV)/.installed-gpu),gpu,cpu)
PADDLE_GPU_INDEX ?= https://www.paddlepaddle.org.cn/packages/stable/cu126/
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(DEVICE)
SAMPLE  ?= samples/sample.wav
PYTEST_ARGS ?=

.PHONY: install system-deps run test bench clean sync-configs fuzz plot-sample

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(DEVICE),gpu)
	$(PY) -m pip uninstall -y -q paddlepaddle || true
	$(PY) -m pip install -q --extra-index-url $(PADDLE_GPU_INDEX) 'paddlepaddle-gpu==3.3.1'
	$(PY) -m pip install -q -e '.[gpu,test]'
else
	$(PY) -m pip uninstall -y -q paddlepaddle-gpu || true
	$(PY) -m pip install -q -e '.[cpu,test]'
endif
	rm -f $(VENV)/.installed-*
	touch $@

# PortAudio, libsndfile, PulseAudio (live-capture tests), espeak-ng/sox (test audio), tmux (dashboard test).
system-deps:
	bash scripts/system-deps.sh

# The main job: replay the shipped sample through the live path, on the dashboard (CNN14 by default; first use
# downloads its weights; offline it says how to import them). MODEL=cnn6, ARGS='--weights FILE' etc. to vary.
MODEL ?= cnn14
ARGS  ?=
run: install system-deps
	$(PY) -m streamtag replay $(SAMPLE) --model $(MODEL) $(ARGS)

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m streamtag bench

clean:
	rm -rf $(VENV) output_dir .pytest_cache *.egg-info

# configs/ is the documented, editable copy; the package ships streamtag/configs/ (tests/test_packaging.py keeps
# them identical). After editing configs/*.yaml, run this.
sync-configs:
	cp configs/*.yaml streamtag/configs/

# The README's picture (docs/images/sample.png): the shipped sample tagged by CNN6 with the tests' seeded weights
# (tests/seeded.py: real weights cannot be downloaded where this project is built, so the scores mean nothing yet),
# events detected on the fly, drawn by `streamtag plot`. With real weights: MODEL=cnn14 PLOT_WEIGHTS=FILE.
PLOT_WEIGHTS ?=
PLOT_MODEL   ?= cnn6
plot-sample: install
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && weights="$(PLOT_WEIGHTS)" && \
	if [ -z "$$weights" ]; then weights="$$tmp/cnn6-seeded.pdparams"; \
	  $(PY) -c "import sys; sys.path.insert(0, 'tests'); from seeded import write_seeded_pdparams; \
	            write_seeded_pdparams('cnn6', sys.argv[1])" "$$weights"; fi && \
	STREAMTAG_HOME=$$tmp $(PY) -m streamtag tag $(SAMPLE) --model $(PLOT_MODEL) --weights "$$weights" \
	  --engine eager --output-dir $$tmp && \
	$(PY) -m streamtag plot $$tmp/$$(basename $(SAMPLE) .wav).npz --audio $(SAMPLE) --events 'Speech,Siren,Alarm' \
	  --width 1200 --height 640 --output-dir $$tmp && \
	mkdir -p docs/images && cp $$tmp/$$(basename $(SAMPLE) .wav).png docs/images/sample.png && \
	echo "wrote docs/images/sample.png"

# Coverage-guided fuzzing (atheris) of every file reader, FUZZ_SECONDS each. New interesting inputs go to .fuzz/
# (not committed); a crash lands in tests/fuzz/crashes/, which tests/test_fuzz.py replays: fix it, commit the file.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= weights archive npz config labels audio
fuzz: install
	@mkdir -p .fuzz tests/fuzz/crashes; status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p .fuzz/$$t; echo "== fuzz $$t ($(FUZZ_SECONDS) s, log .fuzz/$$t.log)"; \
	  $(PY) tests/fuzz/fuzz.py $$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
	    -artifact_prefix=tests/fuzz/crashes/$$t- .fuzz/$$t tests/fuzz/corpus/$$t > .fuzz/$$t.log 2>&1 || status=1; \
	  grep -E "^Done|Uncaught Python exception|^[A-Za-z]+Error|ERROR: libFuzzer|Test unit written" .fuzz/$$t.log; \
	done; exit $$status
