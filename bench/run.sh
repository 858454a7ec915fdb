#!/usr/bin/env bash
# One command: install what the benchmark needs, then run every system on
# every scenario and rewrite the table of bench/RESULTS.md (between its
# markers: the analysis around it stays).  Extra arguments go to run.py
# (e.g. --quick, --reps 5, --scale 1000,5000,10000).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q mosquitto; else sudo apt-get install -y -q mosquitto; fi
fi
python3 -m pip install --quiet -e '.[fast]' pyzmq paho-mqtt psutil uvloop
# A client per connection: 10,000 idle clients need 20,000+ descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
python3 bench/run.py --results bench/RESULTS.md "$@"
