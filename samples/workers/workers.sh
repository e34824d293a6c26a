#!/bin/sh
# One planner and N workers on one machine (docs/scaling.md, "Many workers, one campaign").
# Usage: REDIS_URL=redis://localhost:6379/0 MAXTRAFFIC_API_KEY=... sh workers.sh CAMPAIGN.toml [N]
set -eu
campaign=$1
workers=${2:-4}
redis=${REDIS_URL:-redis://localhost:6379/0}
mkdir -p out
i=0
while [ "$i" -lt "$workers" ]; do
  bulksend worker "$redis" --name "worker-$i" --quiet &
  i=$((i + 1))
done
status=0
bulksend send "$campaign" --workers "$redis" --report out/report.csv \
    --summary-json out/summary.json --progress never || status=$?
wait
exit "$status"
