# Sourced by the GPU check scripts: installs the project's pure-Python dependencies from the wheels in .whl/ when the
# device machine lacks them, and sets the environment every check runs in (HARNESS_CACHE under the work folder $W).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HARNESS_CACHE=$W/cache
