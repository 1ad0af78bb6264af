#!/usr/bin/env bash
# bench_worker at two revisions of this repository, in one run, alternating: the same machine, the same
# minutes, so that a refactoring's cost shows. Each revision runs from a temporary worktree with this
# checkout's virtual environment (its code first on the path).
#
#   bash benchmarks/bench_worker_revisions.sh BEFORE AFTER [ROUNDS] -- [bench_worker arguments]
#   e.g. bash benchmarks/bench_worker_revisions.sh 7b544ae HEAD 2 -- --server batching --sweep 8,64,256
set -euo pipefail
cd "$(dirname "$0")/.."
before="$1" after="$2" rounds="${3:-1}"
shift 3 || true
[[ "${1:-}" == "--" ]] && shift
out="benchmarks/results/revisions"
mkdir -p "${out}"
work="$(mktemp -d)"
trap 'for t in "${work}"/*/; do git worktree remove --force "${t}" 2>/dev/null || true; done; rm -rf "${work}"' EXIT
for revision in "${before}" "${after}"; do
    git worktree add --quiet --detach "${work}/${revision}" "${revision}"
done
for round in $(seq 1 "${rounds}"); do
    for revision in "${before}" "${after}"; do
        tree="${work}/${revision}"
        echo "== round ${round}: ${revision} ($(git rev-parse --short "${revision}"))" >&2
        (cd "${tree}" && PYTHONPATH="${tree}/src:${tree}:${tree}/dev" "${OLDPWD}/.venv/bin/python" \
            -m benchmarks.bench_worker "$@" --json "${OLDPWD}/${out}/${revision}-round${round}.json")
    done
done
