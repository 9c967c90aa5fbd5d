# make demo: install what is missing, build, install into .venv, run the quickstart.
# make test: the same set-up, then the C++ and Python tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
JOBS := $(shell nproc)
APT_PACKAGES := cmake g++ make pkg-config python3-dev python3-venv python3-pip python3-wheel python3-setuptools \
	pybind11-dev libtbb-dev libhdf5-dev hdf5-tools libfmt-dev libgtest-dev libbenchmark-dev \
	libopenmpi-dev openmpi-bin cppzmq-dev libmsgpack-cxx-dev python3-pytest-timeout python3-numpy python3-h5py python3-cloudpickle python3-pytest python3-mpi4py \
	python3-distributed python3-dask python3-matplotlib python3-psutil nlohmann-json3-dev libcli11-dev \
	python3-ipykernel python3-nbclient python3-nbformat

.PHONY: demo test deps build install test-cpp test-python bench clean

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

bench: install
	$(PY) bench/compare.py

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info python/*.egg-info
