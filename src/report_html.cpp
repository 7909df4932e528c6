#include "crosscoder/report_html.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "crosscoder/error.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder {

namespace {

std::string escape_html(std::string_view text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// JSON placed inside <script>: "</" would end the element, so it is written as "<\/".
std::string script_json(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '<' && i + 1 < text.size() && text[i + 1] == '/') {
      out += "<\\/";
      ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

// Colours per class, fixed so that pages are comparable.
std::string class_colour(int latent_class) {
  if (latent_class == kSharedLatent) return "#8c8c8c";
  if (latent_class == kMixedLatent) return "#b07aa1";
  static const char* palette[] = {"#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#76b7b2"};
  return palette[static_cast<std::size_t>(latent_class) % 5];
}

constexpr double kWidth = 640, kHeight = 300, kLeft = 56, kRight = 16, kTop = 28, kBottom = 44;

std::string number(double value) {
  if (value == 0.0) return "0";
  if (std::abs(value) >= 1e4 || std::abs(value) < 1e-2) return fmt::format("{:.0e}", value);
  return fmt::format("{:.3g}", value);
}

std::string axes(std::string_view title, std::string_view x_label, std::string_view y_label,
                 double x_lo, double x_hi, double y_lo, double y_hi, bool log_x = false) {
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  std::string svg = fmt::format(
      "<text x='{}' y='18' class='title'>{}</text>"
      "<line x1='{}' y1='{}' x2='{}' y2='{}' class='axis'/>"
      "<line x1='{}' y1='{}' x2='{}' y2='{}' class='axis'/>",
      kLeft, escape_html(title), kLeft, kTop + h, kLeft + w, kTop + h, kLeft, kTop, kLeft,
      kTop + h);
  for (int i = 0; i <= 4; ++i) {
    const double fx = i / 4.0;
    const double x_value = x_lo + fx * (x_hi - x_lo);
    svg += fmt::format("<text x='{:.1f}' y='{:.1f}' class='tick' text-anchor='middle'>{}</text>",
                       kLeft + fx * w, kTop + h + 14,
                       log_x ? "1e" + number(x_value) : number(x_value));
    svg += fmt::format("<text x='{:.1f}' y='{:.1f}' class='tick' text-anchor='end'>{}</text>",
                       kLeft - 4, kTop + h - fx * h + 4, number(y_lo + fx * (y_hi - y_lo)));
  }
  svg += fmt::format("<text x='{:.1f}' y='{:.1f}' class='label' text-anchor='middle'>{}</text>",
                     kLeft + w / 2, kHeight - 8, escape_html(x_label));
  svg += fmt::format(
      "<text x='14' y='{:.1f}' class='label' text-anchor='middle' "
      "transform='rotate(-90 14 {:.1f})'>{}</text>",
      kTop + h / 2, kTop + h / 2, escape_html(y_label));
  return svg;
}

std::string legend(const std::vector<int>& classes) {
  std::string svg;
  double x = kLeft + 8;
  for (const int c : classes) {
    svg += fmt::format(
        "<rect x='{:.1f}' y='{}' width='10' height='10' fill='{}'/><text x='{:.1f}' y='{}' "
        "class='tick'>{}</text>",
        x, kTop + 2, class_colour(c), x + 14, kTop + 11, escape_html(latent_class_name(c)));
    x += 24 + 7.0 * static_cast<double>(latent_class_name(c).size());
  }
  return svg;
}

// A histogram of `values` over [lo, hi] in `bins` bins, bars stacked by class. Values outside
// the range or NaN are not counted.
std::string histogram(std::string_view id, std::string_view title, std::string_view x_label,
                      const std::vector<double>& values, const std::vector<int>& latent_class,
                      double lo, double hi, int bins) {
  std::map<int, std::vector<std::int64_t>> counts;
  for (std::size_t f = 0; f < values.size(); ++f) {
    const double v = values[f];
    if (std::isnan(v) || v < lo || v > hi) continue;
    const int bin = std::min(bins - 1, static_cast<int>((v - lo) / (hi - lo) * bins));
    auto& row = counts[latent_class[f]];
    row.resize(static_cast<std::size_t>(bins), 0);
    ++row[static_cast<std::size_t>(bin)];
  }
  std::int64_t tallest = 1;
  for (int b = 0; b < bins; ++b) {
    std::int64_t total = 0;
    for (const auto& [c, row] : counts) total += row[static_cast<std::size_t>(b)];
    tallest = std::max(tallest, total);
  }
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  std::string svg =
      fmt::format("<svg id='{}' viewBox='0 0 {} {}' class='plot'>", id, kWidth, kHeight);
  svg += axes(title, x_label, "latents", lo, hi, 0, static_cast<double>(tallest));
  std::vector<int> classes;
  for (int b = 0; b < bins; ++b) {
    double stacked = 0;
    for (const auto& [c, row] : counts) {
      const std::int64_t n = row[static_cast<std::size_t>(b)];
      if (n == 0) continue;
      const double bar = h * static_cast<double>(n) / static_cast<double>(tallest);
      svg += fmt::format(
          "<rect data-plot='{}' data-class='{}' data-bin='{}' data-count='{}' x='{:.2f}' "
          "y='{:.2f}' width='{:.2f}' height='{:.2f}' fill='{}'><title>{}: {} "
          "latents</title></rect>",
          id, escape_html(latent_class_name(c)), b, n, kLeft + w * b / bins,
          kTop + h - stacked - bar, std::max(w / bins - 0.5, 0.5), bar, class_colour(c),
          escape_html(latent_class_name(c)), n);
      stacked += bar;
    }
  }
  for (const auto& [c, row] : counts) classes.push_back(c);
  svg += legend(classes) + "</svg>";
  return svg;
}

// A scatter of (x, y) per latent, coloured by class; NaN or infinite points are skipped.
std::string scatter(std::string_view id, std::string_view title, std::string_view x_label,
                    std::string_view y_label, const std::vector<double>& x,
                    const std::vector<double>& y, const std::vector<int>& latent_class,
                    int max_points, bool log_x) {
  std::vector<std::size_t> shown;
  const std::size_t stride =
      std::max<std::size_t>(1, x.size() / static_cast<std::size_t>(std::max(max_points, 1)));
  for (std::size_t f = 0; f < x.size(); f += stride) {
    const double px = log_x ? (x[f] > 0 ? std::log10(x[f]) : NAN) : x[f];
    if (std::isfinite(px) && std::isfinite(y[f])) shown.push_back(f);
  }
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (!shown.empty()) {
    x_lo = y_lo = INFINITY;
    x_hi = y_hi = -INFINITY;
    for (const std::size_t f : shown) {
      const double px = log_x ? std::log10(x[f]) : x[f];
      x_lo = std::min(x_lo, px), x_hi = std::max(x_hi, px);
      y_lo = std::min(y_lo, y[f]), y_hi = std::max(y_hi, y[f]);
    }
    if (x_hi - x_lo < 1e-9) x_lo -= 0.5, x_hi += 0.5;
    if (y_hi - y_lo < 1e-9) y_lo -= 0.5, y_hi += 0.5;
  }
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  std::string svg =
      fmt::format("<svg id='{}' viewBox='0 0 {} {}' class='plot'>", id, kWidth, kHeight);
  svg += axes(title, x_label, y_label, x_lo, x_hi, y_lo, y_hi, log_x);
  std::vector<int> classes;
  for (const std::size_t f : shown) {
    const double px = log_x ? std::log10(x[f]) : x[f];
    svg += fmt::format("<circle data-latent='{}' cx='{:.1f}' cy='{:.1f}' r='2' fill='{}'/>", f,
                       kLeft + w * (px - x_lo) / (x_hi - x_lo),
                       kTop + h - h * (y[f] - y_lo) / (y_hi - y_lo), class_colour(latent_class[f]));
    if (std::find(classes.begin(), classes.end(), latent_class[f]) == classes.end())
      classes.push_back(latent_class[f]);
  }
  std::sort(classes.begin(), classes.end());
  svg += legend(classes) + "</svg>";
  return svg;
}

// Token ids as the page shows them: text through the vocabulary (escaped for a terminal, then for
// HTML), or the ids themselves.
std::string tokens_html(std::span<const std::int32_t> ids, const Vocabulary* vocabulary) {
  std::vector<std::int32_t> present;
  for (const std::int32_t id : ids)
    if (id >= 0) present.push_back(id);
  if (vocabulary != nullptr) return escape_html(printable(vocabulary->decode(present)));
  std::string text;
  for (const std::int32_t id : present) text += fmt::format("{}{}", text.empty() ? "" : " ", id);
  return text.empty() ? text : " " + text + " ";
}

// One example: the window before, the example's own token marked with an intensity relative to
// the latent's largest activation, the window after.
std::string example_html(const LatentExamples& e, const std::vector<std::int32_t>& windows,
                         std::size_t slot, std::int64_t row, float value, float largest,
                         const Vocabulary* vocabulary) {
  std::string html =
      fmt::format("<div class='example'><span class='meta'>row {} · {:.3f}</span> ", row, value);
  if (windows.empty()) return html + "(no token ids in the data)</div>";
  const auto W = static_cast<std::size_t>(e.window());
  const auto before = static_cast<std::size_t>(e.options.window_before);
  const std::span<const std::int32_t> window(windows.data() + slot * W, W);
  const double alpha = largest > 0.0f ? std::clamp(value / largest, 0.15f, 1.0f) : 1.0;
  const std::int32_t own = window[before];
  const std::string own_text =
      own < 0 ? std::string("?")
              : (vocabulary != nullptr ? escape_html(printable(vocabulary->token_text(own)))
                                       : std::to_string(own));
  html += "<span class='context'>" + tokens_html(window.first(before), vocabulary) +
          fmt::format("<mark data-activation='{:.6g}' style='background:rgba(230,110,20,{:.2f})'>",
                      value, alpha) +
          own_text + "</mark>" + tokens_html(window.subspan(before + 1), vocabulary) +
          "</span></div>";
  return html;
}

// The 30-bin activation histogram of one latent (log-spaced, latent_examples.hpp).
std::string activation_histogram(std::int64_t latent, const LatentExamples& e) {
  const double W = 320, H = 90, bar = W / kHistogramBins;
  std::int64_t tallest = 1;
  const std::int64_t* counts = e.histogram.data() + latent * kHistogramBins;
  for (int b = 0; b < kHistogramBins; ++b) tallest = std::max(tallest, counts[b]);
  std::string svg = fmt::format(
      "<svg class='mini' viewBox='0 0 {} {}'><text x='2' y='10' class='tick'>activations "
      "(log bins, 1e-3 … 1e4)</text>",
      W, H + 14);
  for (int b = 0; b < kHistogramBins; ++b) {
    if (counts[b] == 0) continue;
    const double height = H * static_cast<double>(counts[b]) / static_cast<double>(tallest);
    svg += fmt::format(
        "<rect data-plot='activation-{}' data-bin='{}' data-count='{}' x='{:.1f}' y='{:.1f}' "
        "width='{:.1f}' height='{:.1f}' fill='#4e79a7'><title>bin {}: {}</title></rect>",
        latent, b, counts[b], b * bar, 14 + H - height, bar - 1, height, b, counts[b]);
  }
  return svg + "</svg>";
}

std::string feature_page(std::int32_t latent, const DiffReport& report,
                         const std::vector<std::string>& names, const HtmlReportOptions& options) {
  const LatentExamples& e = *report.examples;
  const WeightMetrics& w = report.weights;
  const auto f = static_cast<std::size_t>(latent);
  std::string html = fmt::format(
      "<section class='feature' id='latent-{}' data-latent='{}'><h3>Latent {} <span "
      "class='meta'>{}</span></h3>",
      latent, latent, latent, escape_html(latent_class_name(w.latent_class[f])));
  std::string norms;
  for (int m = 0; m < w.sources; ++m) {
    norms += fmt::format("{}{}: ‖d‖ {:.3f}, relative {:.3f}", m ? "; " : "",
                         escape_html(names[static_cast<std::size_t>(m)]),
                         w.decoder_norm[f * static_cast<std::size_t>(w.sources) + m],
                         w.relative_norm[f * static_cast<std::size_t>(w.sources) + m]);
  }
  html += "<p>" + norms;
  if (report.data) {
    html += fmt::format("<br>active in {} of {} rows ({:.3g}%), mean {:.3f}, max {:.3f}",
                        e.active_rows[f], e.rows, 100.0 * report.data->frequency[f],
                        report.data->mean_activation[f], report.data->max_activation[f]);
  }
  if (report.contrast) {
    html += fmt::format(
        "<br>Cohen's d {:.3f}, AUROC {:.3f}, firing on positives {:.3f}, on "
        "negatives {:.3f}",
        report.contrast->cohens_d[f], report.contrast->auroc[f],
        report.contrast->firing_positive[f], report.contrast->firing_negative[f]);
  }
  html += "</p>" + activation_histogram(latent, e);
  if (e.active_rows[f] == 0) return html + "<p>Never active in the data.</p></section>";
  const float largest =
      e.options.top > 0 ? e.top_values[f * static_cast<std::size_t>(e.options.top)] : 0.0f;
  const auto shown = static_cast<std::size_t>(std::max(options.examples_per_page, 0));
  html += "<h4>Top activations</h4>";
  for (std::size_t i = 0; i < shown && i < static_cast<std::size_t>(e.options.top); ++i) {
    const std::size_t slot = f * static_cast<std::size_t>(e.options.top) + i;
    if (e.top_rows[slot] < 0) break;
    html += example_html(e, e.top_windows, slot, e.top_rows[slot], e.top_values[slot], largest,
                         options.vocabulary);
  }
  html += "<h4>Across the distribution (lowest first)</h4>";
  for (std::size_t i = 0; i < shown && i < static_cast<std::size_t>(e.options.samples); ++i) {
    const std::size_t slot = f * static_cast<std::size_t>(e.options.samples) + i;
    if (e.sample_rows[slot] < 0) break;
    html += example_html(e, e.sample_windows, slot, e.sample_rows[slot], e.sample_values[slot],
                         largest, options.vocabulary);
  }
  return html + "</section>";
}

constexpr std::string_view kStyle = R"(
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; max-width: 1340px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.plot { width: 640px; height: 300px; background: #fafafa; border: 1px solid #ddd; }
.title { font-size: 13px; font-weight: 600; } .tick { font-size: 10px; fill: #555; }
.label { font-size: 11px; fill: #333; } .axis { stroke: #444; stroke-width: 1; }
table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; } td.c { text-align: left; }
.summary td { text-align: left; }
.feature { border-top: 1px solid #ccc; margin-top: 18px; } .feature h3 { font-size: 15px; }
.feature h4 { font-size: 13px; margin: 10px 0 4px; } .meta { color: #777; font-size: 12px; }
.example { font: 12px ui-monospace, monospace; white-space: pre-wrap; margin: 2px 0; }
.example .meta { display: inline-block; min-width: 150px; }
.mini { width: 320px; height: 104px; background: #fafafa; border: 1px solid #ddd; }
)";

constexpr std::string_view kScript = R"(
window.onerror = function (message) {
  document.body.dataset.jsErrors = (document.body.dataset.jsErrors || '') + message + ';';
};
(function () {
  var data = JSON.parse(document.getElementById('latent-data').textContent);
  var table = document.getElementById('top-latents');
  var columns = data.columns, rows = data.rows, order = { column: -1, descending: true };
  var pages = {};
  (data.pages || []).forEach(function (latent) { pages[latent] = true; });
  function format(v) {
    if (v === null) return '';
    if (typeof v === 'string') return v;
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : v.toFixed(4);
  }
  function render() {
    var head = '<tr>' + columns.map(function (c, i) {
      var mark = i === order.column ? (order.descending ? ' \u25BC' : ' \u25B2') : '';
      return '<th data-column="' + i + '">' + c + mark + '</th>';
    }).join('') + '</tr>';
    var body = rows.map(function (r) {
      return '<tr>' + r.map(function (v, i) {
        var text = format(v);
        if (i === 0 && pages[v]) text = '<a href="#latent-' + v + '">' + text + '</a>';
        return '<td' + (typeof v === 'string' ? ' class="c"' : '') + '>' + text + '</td>';
      }).join('') + '</tr>';
    }).join('');
    table.innerHTML = head + body;
    Array.prototype.forEach.call(table.querySelectorAll('th'), function (th) {
      th.onclick = function () { sort(Number(th.dataset.column)); };
    });
    table.dataset.ready = 'true';
  }
  function sort(column) {
    order.descending = order.column === column ? !order.descending : true;
    order.column = column;
    rows.sort(function (a, b) {
      var x = a[column], y = b[column];
      if (x === null) return 1; if (y === null) return -1;
      if (x < y) return order.descending ? 1 : -1;
      if (x > y) return order.descending ? -1 : 1;
      return 0;
    });
    render();
  }
  render();
})();
)";

}  // namespace

double density_floor(std::int64_t rows) {
  return std::floor(std::log10(1.0 / static_cast<double>(std::max<std::int64_t>(rows, 1))));
}

std::string diff_report_html(const DiffReport& report, const HtmlReportOptions& options) {
  const WeightMetrics& w = report.weights;
  const int M = w.sources;
  std::string body;
  // Summary.
  const nlohmann::json config = nlohmann::json::parse(report.model_config);
  std::map<int, std::int64_t> classes;
  for (const int c : w.latent_class) ++classes[c];
  std::string class_text;
  for (const auto& [c, n] : classes)
    class_text += fmt::format("{}{} {}", class_text.empty() ? "" : ", ", latent_class_name(c), n);
  std::vector<std::string> names = report.source_names;
  for (int m = static_cast<int>(names.size()); m < M; ++m)
    names.push_back(fmt::format("source{}", m));
  std::string source_text;
  for (int m = 0; m < M; ++m) source_text += fmt::format("{}{}: {}", m ? ", " : "", m, names[m]);
  body += "<table class='summary'>";
  body += fmt::format("<tr><td>sources</td><td>{}</td></tr>", escape_html(source_text));
  body += fmt::format("<tr><td>crosscoder</td><td>{} latents, width {}, {} (k = {})</td></tr>",
                      w.latents, escape_html(config.value("width", nlohmann::json(0)).dump()),
                      escape_html(config.value("activation", std::string("?"))),
                      escape_html(config.value("k", nlohmann::json(0)).dump()));
  const std::string rule_text = w.class_rule == ClassRule::minder
                                    ? std::string("Minder et al.: normalised difference")
                                    : fmt::format("τ = {}", w.exclusive_threshold);
  body += fmt::format("<tr><td>classes ({})</td><td>{}</td></tr>", escape_html(rule_text),
                      escape_html(class_text));
  if (report.data) {
    std::string fve;
    for (int m = 0; m < M; ++m) fve += fmt::format("{}{:.4f}", m ? ", " : "", report.data->fve[m]);
    body += fmt::format(
        "<tr><td>held-out data</td><td>{} rows; FVE per source {}; L0 {:.2f}; dead latents {} "
        "({:.1f}%)</td></tr>",
        report.data->rows, fve, report.data->l0, report.data->dead_latents,
        100.0 * static_cast<double>(report.data->dead_latents) /
            std::max(static_cast<double>(w.latents), 1.0));
  }
  if (report.contrast) {
    body += fmt::format("<tr><td>labels</td><td>{} positive, {} negative rows</td></tr>",
                        report.contrast->positives, report.contrast->negatives);
  }
  body += "</table>";

  // Plots.
  body += "<h2>Decoder norms and directions</h2><div class='grid'>";
  const int last = M - 1;
  for (int m = (M == 2 ? 1 : 0); m < M; ++m) {
    body += histogram(
        fmt::format("relative-norm-{}", m),
        fmt::format("Relative decoder norm of {} (0: absent there, 1: only there)", names[m]),
        fmt::format("‖d_{}‖ / Σ_m ‖d_m‖", m),
        latent_metric(report, fmt::format("relative_norm_{}", m)), w.latent_class, 0.0, 1.0, 50);
  }
  if (M >= 2) {
    body += histogram("decoder-cosine", "Cosine between the sources' decoder vectors (pair 0, 1)",
                      "cos(d_0, d_1)", latent_metric(report, "decoder_cosine"), w.latent_class,
                      -1.0, 1.0, 40);
  }
  body += "</div>";
  const std::vector<double> relative_last =
      latent_metric(report, fmt::format("relative_norm_{}", last));
  if (report.data || report.contrast) {
    body += "<h2>Activity</h2><div class='grid'>";
    if (report.data) {
      // Density: how often latents fire, stacked by class, on a log scale from one row in the
      // dataset to every row; dead latents (never active) cannot be placed and are counted in
      // the title instead.
      std::vector<double> log_frequency(report.data->frequency.size());
      std::map<int, std::int64_t> dead;
      for (std::size_t f = 0; f < log_frequency.size(); ++f) {
        const double frequency = report.data->frequency[f];
        log_frequency[f] = frequency > 0 ? std::log10(frequency) : std::nan("");
        if (frequency <= 0) ++dead[w.latent_class[f]];
      }
      std::string dead_text;
      for (const auto& [c, n] : dead)
        dead_text += fmt::format("{}{} {}", dead_text.empty() ? "" : ", ", n, latent_class_name(c));
      body += histogram("density",
                        fmt::format("Firing frequency by class (dead, not shown: {})",
                                    dead_text.empty() ? "none" : dead_text),
                        "log10 frequency", log_frequency, w.latent_class,
                        density_floor(report.data->rows), 0.0, kDensityBins);
      body +=
          scatter("frequency-vs-norm", "Activation frequency against relative norm",
                  "log10 frequency", fmt::format("relative norm of {}", names[last]),
                  report.data->frequency, relative_last, w.latent_class, options.max_points, true);
    }
    if (report.contrast) {
      body +=
          scatter("cohens-d-vs-norm", "Cohen's d (positive vs negative rows) against relative norm",
                  "relative norm of " + names[last], "Cohen's d", relative_last,
                  report.contrast->cohens_d, w.latent_class, options.max_points, false);
    }
    body += "</div>";
  }

  // Table of top latents, sortable in the page.
  const std::string metric = report.contrast ? "cohens_d" : fmt::format("relative_norm_{}", last);
  const std::vector<std::int32_t> ranking = rank_latents(report, metric);
  std::vector<std::string> columns = {"latent", "class"};
  std::vector<std::string> metrics;
  for (int m = 0; m < M; ++m) metrics.push_back(fmt::format("decoder_norm_{}", m));
  metrics.push_back(fmt::format("relative_norm_{}", last));
  if (M >= 2) metrics.push_back("decoder_cosine");
  if (report.data)
    metrics.insert(metrics.end(), {"frequency", "mean_activation", "max_activation"});
  if (report.contrast) metrics.insert(metrics.end(), {"cohens_d", "auroc", "freq_pos", "freq_neg"});
  if (report.scaling && M >= 2) {
    for (int m = 0; m < M; ++m) metrics.push_back(fmt::format("nu_error_{}", m));
  }
  std::vector<std::vector<double>> values;
  for (const std::string& name : metrics) {
    columns.push_back(name);
    values.push_back(latent_metric(report, name));
  }
  nlohmann::json rows = nlohmann::json::array();
  const auto shown =
      std::min<std::size_t>(ranking.size(), static_cast<std::size_t>(std::max(options.top, 0)));
  for (std::size_t i = 0; i < shown; ++i) {
    const auto f = static_cast<std::size_t>(ranking[i]);
    nlohmann::json row = nlohmann::json::array({f, latent_class_name(w.latent_class[f])});
    for (const auto& column : values)
      row.push_back(std::isfinite(column[f]) ? nlohmann::json(column[f]) : nlohmann::json(nullptr));
    rows.push_back(std::move(row));
  }
  body += fmt::format("<h2>Top {} latents by {} (click a column to sort)</h2>", shown,
                      escape_html(metric));
  body += "<table id='top-latents'></table>";
  // Feature pages for the first latents of each ranking shown, in order of first appearance.
  std::vector<std::int32_t> pages;
  if (report.examples) {
    std::vector<std::string> rankings = {fmt::format("relative_norm_{}", last)};
    if (report.contrast) rankings.insert(rankings.begin(), "cohens_d");
    std::vector<bool> chosen(static_cast<std::size_t>(w.latents), false);
    for (const std::string& ranking_metric : rankings) {
      const std::vector<std::int32_t> order = rank_latents(report, ranking_metric);
      for (std::size_t i = 0;
           i < order.size() && i < static_cast<std::size_t>(std::max(options.feature_pages, 0));
           ++i) {
        if (chosen[static_cast<std::size_t>(order[i])]) continue;
        chosen[static_cast<std::size_t>(order[i])] = true;
        pages.push_back(order[i]);
      }
    }
    if (options.vocabulary != nullptr) {
      // Every token id shown must be in the vocabulary: a clear error, not a page of '?'.
      for (const auto* windows : {&report.examples->top_windows, &report.examples->sample_windows})
        for (const std::int32_t id : *windows)
          if (id >= static_cast<std::int32_t>(options.vocabulary->size()))
            throw Error(
                fmt::format("HTML report: the data's token id {} is outside the "
                            "vocabulary's {} tokens (is it the tokenizer the data was "
                            "written with?)",
                            id, options.vocabulary->size()));
    }
  }
  body += "<script type='application/json' id='latent-data'>" +
          script_json({{"columns", columns}, {"rows", rows}, {"pages", pages}}) + "</script>";
  if (!pages.empty()) {
    body += fmt::format("<h2>Feature pages: the first {} latents of each ranking ({} pages{})</h2>",
                        options.feature_pages, pages.size(),
                        report.examples->windows_stop_at_documents ? ""
                        : report.examples->has_windows()
                            ? "; no document ids in the data: windows may cross "
                              "documents"
                            : "; no token ids in the data");
    for (const std::int32_t latent : pages) body += feature_page(latent, report, names, options);
  }

  return fmt::format(
      "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{}</title><style>{}"
      "</style></head><body><h1>{}</h1>{}<script>{}</script></body></html>\n",
      escape_html(options.title), kStyle, escape_html(options.title), body, kScript);
}

void write_diff_report_html(const std::filesystem::path& path, const DiffReport& report,
                            const HtmlReportOptions& options) {
  const std::string text = diff_report_html(report, options);
  io::write_file_atomically(
      path, [&](std::FILE* stream) { io::write_bytes(stream, text.data(), text.size(), path); });
}

}  // namespace crosscoder
