#!/usr/bin/env bash
# The review half of erel-sync on the sample repository: validate it, then show the plan a pull
# request that upgrades the web group would get (text for the terminal, Markdown for the PR).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin/erel-sync"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp -r "$here/sample-repo" "$work/config"
cd "$work/config"
git init -q -b main
git -c user.email=demo@erel-sync -c user.name=demo add -A
git -c user.email=demo@erel-sync -c user.name=demo commit -qm "sample cluster"

echo "== erel-sync validate (the sample repository as committed)"
"$bin" validate --rev HEAD .

echo
echo "== a pull request: web moves hello 0.2.0 -> 0.3.0; edge gets a new greeting"
sed -i 's/version: "0.2.0"/version: "0.3.0"/' groups/web.yaml
sed -i 's/hello from the edge/hello again from the edge/' groups/edge.yaml
git -c user.email=demo@erel-sync -c user.name=demo commit -qam "web: hello 0.3.0"
set +e
"$bin" plan --repo . --base HEAD~1 --head HEAD --hosts .erel/hosts.yaml
echo "(exit $? = changes)"
echo
echo "== the same plan as a pull-request comment (-o markdown)"
"$bin" plan --repo . --base HEAD~1 --head HEAD --hosts .erel/hosts.yaml -o markdown
echo
echo "== a broken change is refused with file:line:col (exit 2)"
sed -i 's/version: "0.3.0"/version: 0.4/' groups/web.yaml
"$bin" validate .
echo "(exit $?)"
exit 0
