#!/usr/bin/env bash
# Renders an HTML report in headless Chromium and fails on JavaScript errors or an empty page:
#   check_html_in_browser.sh REPORT.html SCREENSHOT.png [MIN_FEATURE_PAGES]
# With MIN_FEATURE_PAGES, also fails unless that many feature pages, each with highlighted
# example tokens and links to them from the table, are in the rendered page.
# Exits 77 (a skip for ctest) when chromium is not installed.
set -euo pipefail
html=$1
screenshot=$2
min_features=${3:-0}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
  echo "check_html_in_browser: chromium is not installed (apt-get install chromium; ./dev.sh test installs it)"
  exit 77
fi
url="file://$(realpath "$html")"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1360,2400)
dom=$(timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" 2>/dev/null)
timeout 120 "$browser" "${flags[@]}" --screenshot="$screenshot" "$url" > /dev/null 2>&1
status=0
if grep -q 'data-js-errors=' <<< "$dom"; then
  echo "JavaScript errors: $(grep -o 'data-js-errors="[^"]*"' <<< "$dom")"
  status=1
fi
if ! grep -q 'data-ready="true"' <<< "$dom"; then
  echo "the table of top latents was not rendered (no data-ready marker)"
  status=1
fi
rows=$(grep -o '<tr>' <<< "$dom" | wc -l)
plots=$(grep -o '<svg' <<< "$dom" | wc -l)
if ((rows < 2 || plots < 1)); then
  echo "the page looks empty: $plots plots, $rows table rows"
  status=1
fi
features=$(grep -o '<section class="feature"' <<< "$dom" | wc -l || true)
marks=$(grep -o '<mark data-activation=' <<< "$dom" | wc -l || true)
links=$(grep -o '<a href="#latent-' <<< "$dom" | wc -l || true)
if ((features < min_features || (min_features > 0 && (marks < features || links < 1)))); then
  echo "feature pages: $features (expected at least $min_features), $marks highlighted tokens," \
       "$links links from the table"
  status=1
fi
size=$(stat -c %s "$screenshot" 2> /dev/null || echo 0)
if ((size < 20000)); then
  echo "the screenshot $screenshot is missing or blank ($size bytes)"
  status=1
fi
if ((status == 0)); then
  echo "browser check passed: $plots plots, $rows table rows, $features feature pages" \
       "($marks highlighted tokens), screenshot $screenshot ($size bytes)"
fi
exit $status
