#!/usr/bin/env bash
# mypy (strict) over the whole tree under the import names it runs with.
# The folders are mapped to `mesial.*` by setuptools' package-dir, which mypy cannot
# follow through the editable install's import hook; a tree of symlinks gives it the
# same names instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck/mesial"
mkdir -p "$tree"
touch "$tree/__init__.py"
for package in common cli aligner api operator; do
  ln -sfn "../../../$package" "$tree/$package"
done
cd "$root"
exec "${MYPY:-.venv/bin/mypy}" $(find -L build/typecheck/mesial -name '*.py' -not -path '*/__pycache__/*') tests bench scripts "$@"
