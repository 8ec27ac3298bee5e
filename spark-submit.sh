#!/usr/bin/env bash
# Run one job of the suite the same way everywhere.
#
#   ./spark-submit.sh [--target local|standalone|emr|databricks] [--dry-run] jobs/<job>.py --config FILE [job args...]
#
# local       spark-submit from the project's virtualenv, master local[2], the Delta jars that
#             `make jars` fetched (--jars), Delta's SQL extension and catalog, this interpreter for
#             the Python workers.  The default.
# standalone  like local, but on the standalone cluster $TSA_SPARK_MASTER (spark://host:port), client
#             deploy mode, tsa_lib from the wheel $TSA_WHEEL (built when unset) shipped with --py-files
#             to the driver and the executors; the project root stays off PYTHONPATH.  The config
#             needs spark.target: cluster.  TSA_DRIVER_MEMORY / TSA_EXECUTOR_MEMORY / TSA_EXECUTOR_CORES
#             size it (2g / 2g / 2).  The replay (tsa_lib.orchestration.replay) runs the DAG this way.
# emr         builds a wheel of tsa_lib, then `spark-submit --master yarn --deploy-mode cluster`
#             shipping the wheel (--py-files) and the config (--files); the job reads the config by
#             its base name.  Delta comes from the EMR release.  Set TSA_EMR_SUBMIT_ARGS for extra
#             spark-submit flags (executor sizes, --conf ...).  Run it on the master node, or wrap the
#             printed command in an EMR step (the Airflow DAG does).
# databricks  builds the wheel and prints (and with TSA_DATABRICKS_SUBMIT=1 submits through the
#             `databricks` CLI) a one-time run: spark_python_task + the wheel as a library +
#             an idempotency token derived from the job, its arguments and the config's hash.
#             TSA_DATABRICKS_ROOT (default /Volumes/main/fraud/tsa, a Unity Catalog volume) is where
#             the wheel, job and config go; a legacy dbfs:/ root works too.  The nightly schedule
#             itself is the bundle in databricks.yml.
# --dry-run   print the exact command (or the run JSON) instead of running it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET=local
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) TARGET="${2:?--target needs local|standalone|emr|databricks}"; shift 2 ;;
    --target=*) TARGET="${1#--target=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
JOB="${1:-}"
[[ -n "$JOB" ]] || { echo "spark-submit.sh: give a job file, e.g. jobs/build_sequences.py (see --help)" >&2; exit 2; }
shift
[[ -f "$ROOT/$JOB" || -f "$JOB" ]] || { echo "spark-submit.sh: job file '$JOB' not found" >&2; exit 2; }
[[ -f "$JOB" ]] || JOB="$ROOT/$JOB"
ARGS=("$@")

config_of() {  # the value after --config in the job's arguments
  local prev=""
  for a in "${ARGS[@]}"; do
    [[ "$prev" == "--config" ]] && { echo "$a"; return; }
    [[ "$a" == --config=* ]] && { echo "${a#--config=}"; return; }
    prev="$a"
  done
}
CONFIG="$(config_of)"
[[ -n "$CONFIG" ]] || { echo "spark-submit.sh: the job needs --config FILE" >&2; exit 2; }

run() {
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else exec "$@"; fi
}

build_wheel() {  # prints the wheel's path
  local out="$ROOT/dist"
  if [[ $DRY -eq 0 ]]; then
    rm -rf "$out" && "${PY}" -m pip wheel -q --no-deps -w "$out" "$ROOT" >&2
    ls "$out"/tsa_lib-*.whl
  else
    echo "$out/tsa_lib-0.1.0-py3-none-any.whl"
  fi
}

PY="${TSA_PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"

spark_submit_bin() {  # the virtualenv's spark-submit, else the one on PATH
  local s="$ROOT/.venv/bin/spark-submit"
  [[ -x "$s" ]] || s="$(command -v spark-submit || true)"
  [[ -n "$s" ]] || { echo "spark-submit.sh: no spark-submit: run 'make setup'" >&2; exit 2; }
  echo "$s"
}

delta_jars() {  # the Delta jars `make jars` fetched, comma-separated
  (cd "$ROOT" && PYTHONPATH="$ROOT" "$PY" -c \
    'from tsa_lib.spark.session import find_delta_jars; print(",".join(find_delta_jars().files))')
}

without_root() {  # a PYTHONPATH value without the project root (or an empty entry / '.')
  local IFS=: p out=()
  for p in $1; do
    [[ -z "$p" || "$p" == "." || "${p%/}" == "$ROOT" ]] || out+=("$p")
  done
  echo "${out[*]:-}"
}

case "$TARGET" in
  local)
    SPARK_SUBMIT="$(spark_submit_bin)"
    JARS="$(delta_jars)"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export PYSPARK_PYTHON="$PY" PYSPARK_DRIVER_PYTHON="$PY"
    run "$SPARK_SUBMIT" --master "${TSA_LOCAL_MASTER:-local[2]}" --driver-memory "${TSA_DRIVER_MEMORY:-4g}" \
      --jars "$JARS" \
      --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
      --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
      --conf spark.ui.showConsoleProgress=false \
      --conf "spark.pyspark.python=$PY" --conf "spark.pyspark.driver.python=$PY" \
      "$JOB" "${ARGS[@]}"
    ;;
  standalone)
    [[ -n "${TSA_SPARK_MASTER:-}" ]] || {
      echo "spark-submit.sh: --target standalone needs TSA_SPARK_MASTER (e.g. spark://127.0.0.1:7077)" >&2; exit 2; }
    SPARK_SUBMIT="$(spark_submit_bin)"
    JARS="$(delta_jars)"
    WHEEL="${TSA_WHEEL:-}"
    [[ -n "$WHEEL" ]] || WHEEL="$(build_wheel)"
    [[ $DRY -eq 1 || -f "$WHEEL" ]] || { echo "spark-submit.sh: TSA_WHEEL '$WHEEL' is not a file" >&2; exit 2; }
    # the driver and the executors import tsa_lib from the wheel, never from the checkout
    PYTHONPATH="$(without_root "${PYTHONPATH:-}")"
    if [[ -n "$PYTHONPATH" ]]; then export PYTHONPATH; else unset PYTHONPATH; fi
    export PYSPARK_PYTHON="$PY" PYSPARK_DRIVER_PYTHON="$PY"
    # pyspark puts only .zip/.egg/.jar py-files on the executors' sys.path: the wheel's copy in
    # each executor's folder goes there through the Python workers' PYTHONPATH.
    # Short jobs on a few cores: the C1-only JIT and the serial GC leave the cores to the work
    # (bench/replay/README.md); TSA_JAVA_OPTS="" turns that off.
    JAVA_OPTS="${TSA_JAVA_OPTS--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
    JAVA_ARGS=()
    [[ -z "$JAVA_OPTS" ]] || JAVA_ARGS=(--driver-java-options "$JAVA_OPTS" --conf "spark.executor.extraJavaOptions=$JAVA_OPTS")
    run "$SPARK_SUBMIT" --master "$TSA_SPARK_MASTER" --deploy-mode client \
      --driver-memory "${TSA_DRIVER_MEMORY:-2g}" "${JAVA_ARGS[@]}" \
      --py-files "$WHEEL" --jars "$JARS" \
      --conf "spark.executorEnv.PYTHONPATH=$(basename "$WHEEL")" \
      --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
      --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
      --conf spark.sql.catalogImplementation=in-memory \
      --conf spark.databricks.delta.properties.defaults.enableDeletionVectors=false \
      --conf spark.ui.showConsoleProgress=false --conf spark.ui.enabled=false --conf spark.log.level=WARN \
      --conf "spark.pyspark.python=$PY" --conf "spark.pyspark.driver.python=$PY" \
      --conf "spark.executor.memory=${TSA_EXECUTOR_MEMORY:-2g}" \
      --conf "spark.executor.cores=${TSA_EXECUTOR_CORES:-2}" --conf "spark.cores.max=${TSA_EXECUTOR_CORES:-2}" \
      "$JOB" "${ARGS[@]}"
    ;;
  emr)
    WHEEL="$(build_wheel)"
    CONF_NAME="$(basename "$CONFIG")"
    JOB_ARGS=()
    prev=""
    for a in "${ARGS[@]}"; do  # the config travels with --files; the job reads it by base name
      if [[ "$prev" == "--config" ]]; then JOB_ARGS+=("$CONF_NAME"); else JOB_ARGS+=("$a"); fi
      prev="$a"
    done
    # shellcheck disable=SC2086
    run spark-submit --master yarn --deploy-mode cluster \
      --py-files "$WHEEL" --files "$CONFIG" \
      --conf spark.sql.execution.arrow.pyspark.enabled=true \
      ${TSA_EMR_SUBMIT_ARGS:-} "$JOB" "${JOB_ARGS[@]}"
    ;;
  databricks)
    WHEEL="$(build_wheel)"
    ROOT_DB="${TSA_DATABRICKS_ROOT:-/Volumes/main/fraud/tsa}"
    JSON="$(TSA_JOB="$JOB" TSA_CONFIG="$CONFIG" TSA_WHEEL="$WHEEL" TSA_DBFS="$ROOT_DB" "$PY" - "${ARGS[@]}" <<'PYEOF'
import hashlib, json, os, sys
job, config, wheel, dbfs = (os.environ[k] for k in ("TSA_JOB", "TSA_CONFIG", "TSA_WHEEL", "TSA_DBFS"))
args = sys.argv[1:]
conf_remote = f"{dbfs}/conf/{os.path.basename(config)}"
# a volume path is read as is; a legacy dbfs:/ path through the /dbfs fuse mount
params = [conf_remote.replace("dbfs:/", "/dbfs/") if a == config else a for a in args]
token = hashlib.sha256(json.dumps([os.path.basename(job), params, open(config, "rb").read().hex()]).encode()).hexdigest()[:32]
run = {
    "run_name": f"tsa-{os.path.basename(job)[:-3]}-{'-'.join(a for a in args if a[:2].isdigit())}",
    "idempotency_token": token,
    "tasks": [{
        "task_key": os.path.basename(job)[:-3],
        "spark_python_task": {"python_file": f"{dbfs}/jobs/{os.path.basename(job)}", "parameters": params},
        "libraries": [{"whl": f"{dbfs}/wheels/{os.path.basename(wheel)}"}],
        "existing_cluster_id": os.environ.get("TSA_DATABRICKS_CLUSTER_ID", "<cluster-id>"),
    }],
}
print(json.dumps(run, indent=1))
PYEOF
)"
    if [[ $DRY -eq 1 || "${TSA_DATABRICKS_SUBMIT:-0}" != "1" ]]; then
      echo "$JSON"
      [[ $DRY -eq 1 ]] || echo "(set TSA_DATABRICKS_SUBMIT=1 to upload with 'databricks fs cp' and submit with 'databricks jobs submit')" >&2
    else
      DEST="$ROOT_DB"; [[ "$DEST" == dbfs:/* ]] || DEST="dbfs:$ROOT_DB"   # the CLI names volumes dbfs:/Volumes/...
      databricks fs cp --overwrite "$WHEEL" "$DEST/wheels/$(basename "$WHEEL")"
      databricks fs cp --overwrite "$JOB" "$DEST/jobs/$(basename "$JOB")"
      databricks fs cp --overwrite "$CONFIG" "$DEST/conf/$(basename "$CONFIG")"
      databricks jobs submit --json "$JSON"
    fi
    ;;
  *) echo "spark-submit.sh: --target must be local, emr or databricks (or standalone), got '$TARGET'" >&2; exit 2 ;;
esac
