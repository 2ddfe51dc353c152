#!/usr/bin/env bash
# Render an output's report.html in headless Chromium and save a screenshot (docs/report.md).
# Usage: tools/render_report.sh OUTPUT [SCREENSHOT.png] [WIDTHxHEIGHT]
#   OUTPUT      a local latentforge output folder (e.g. out/demo) or a report.html file
#   SCREENSHOT  where the PNG goes (default: /tmp/report_shot.png, outside the repository)
# Installs Debian's `chromium` with apt-get when it is missing.
set -euo pipefail

target="${1:?usage: tools/render_report.sh OUTPUT [SCREENSHOT.png] [WIDTHxHEIGHT]}"
shot="${2:-/tmp/report_shot.png}"
size="${3:-1280x2400}"
page="$target"
[[ -d "$target" ]] && page="$target/report.html"
[[ -f "$page" ]] || { echo "no report at $page (latentforge inspect OUTPUT --report builds one)" >&2; exit 2; }
page="$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"

browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
  echo "chromium is missing: installing it with apt-get" >&2
  sudo_cmd=""
  [[ "$(id -u)" -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
  browser="$(command -v chromium)"
fi

"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size="${size/x/,}" --screenshot="$shot" "file://$page" 2>/dev/null
echo "screenshot of $page: $shot"
