# make demo: install what is missing, build, install into .venv, run the quickstart.
# make test: the same set-up, then the C++ and Python tests.
# make fuzz: builds the libFuzzer targets (clang, ASan+UBSan) in build-fuzz/ and runs each FUZZ_SECONDS.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
JOBS := $(shell nproc)
APT_PACKAGES := cmake g++ make pkg-config python3-dev python3-venv python3-pip python3-wheel python3-setuptools \
	pybind11-dev libtbb-dev libhdf5-dev hdf5-tools libfmt-dev libgtest-dev libbenchmark-dev \
	libopenmpi-dev openmpi-bin cppzmq-dev libmsgpack-cxx-dev python3-pytest-timeout python3-numpy python3-h5py python3-cloudpickle python3-pytest python3-mpi4py \
	python3-distributed python3-dask python3-matplotlib python3-psutil nlohmann-json3-dev libcli11-dev \
	python3-ipykernel python3-nbclient python3-nbformat python3-tqdm python3-pandas python3-aiohttp chromium chromium-driver \
	python3-selenium python3-xxhash python3-aiosmtpd openssl

FUZZ_BUILD := build-fuzz
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := decode curve_key
FUZZ_APT_PACKAGES := clang libclang-rt-14-dev

.PHONY: demo test deps build install test-cpp test-python bench clean fuzz

demo: install
	$(PY) examples/quickstart.py

test: install
	$(MAKE) test-cpp test-python

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -q $$missing; \
	fi

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DPython3_EXECUTABLE=/usr/bin/python3

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

$(VENV)/bin/python: | deps
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

install: build $(VENV)/bin/python
	DYNEXEC_BUILD_DIR=$(abspath $(BUILD)) $(PY) -m pip install -q --no-build-isolation --no-deps .

test-cpp:
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -j $(JOBS)

test-python:
	DYNEXEC_EXAMPLE_PLUGIN=$(abspath $(BUILD))/examples/native_service/libdynexec_example_service.so \
	  $(PY) -m pytest -q tests

# Each target runs FUZZ_SECONDS on a corpus kept in build-fuzz/corpus (seeded with real messages); any crash,
# sanitizer report, timeout (-timeout s per input) or allocation past -rss_limit_mb fails it, and the input
# that did it is left in build-fuzz/artifacts/.
fuzz: deps
	@missing=$$(for p in $(FUZZ_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -q $$missing; \
	fi
	cmake -S . -B $(FUZZ_BUILD) -DDYNEXEC_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	$(FUZZ_BUILD)/cpp/wire/fuzz/fuzz_seeds $(FUZZ_BUILD)/corpus/decode $(FUZZ_BUILD)/corpus/curve_key
	mkdir -p $(FUZZ_BUILD)/artifacts
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/cpp/wire/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 \
	    -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/artifacts/ \
	    $(FUZZ_BUILD)/corpus/$$t > $(FUZZ_BUILD)/fuzz_$$t.log 2>&1 \
	    || { tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; echo "fuzz_$$t FAILED: see $(FUZZ_BUILD)/fuzz_$$t.log"; exit 1; }; \
	  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" $(FUZZ_BUILD)/fuzz_$$t.log; \
	done

bench: install
	$(PY) bench/compare.py

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info python/*.egg-info
