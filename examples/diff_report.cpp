// The diff stage from C++: load a trained crosscoder, run one pass over held-out paired
// activations, write the report (JSON and a self-contained HTML page) and print the latents that
// best separate labelled rows, among those exclusive to the fine-tuned model.
//
//   diff_report model.safetensors base.npy finetuned.npy [labels.npy] [out-prefix]
//
// labels.npy holds one integer per row: 1 for the behaviour of interest (e.g. tool-use prompts),
// 0 for the rest, anything else ignored. Any dataset layout ActivationDataset::open takes works.
#include <cstdio>
#include <string>

#include <crosscoder/crosscoder.hpp>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s model.safetensors base.npy finetuned.npy [labels.npy] [out-prefix]\n",
                 argv[0]);
    return 2;
  }
  try {
    const crosscoder::Crosscoder model =
        crosscoder::Crosscoder::load(argv[1], crosscoder::best_backend());
    crosscoder::ActivationDataset dataset = crosscoder::ActivationDataset::open({argv[2], argv[3]});
    if (argc > 4) dataset.attach_labels(argv[4]);
    const std::string prefix = argc > 5 ? argv[5] : "diff";

    crosscoder::DiffOptions options;  // Latent Scaling of the fine-tune's exclusive latents
    const crosscoder::DiffReport report = crosscoder::diff(model, dataset, options);
    crosscoder::write_diff_report_json(prefix + ".json", report);
    crosscoder::write_diff_report_html(prefix + ".html", report, {});

    std::printf("%lld rows: FVE base %.3f, fine-tuned %.3f; L0 %.1f\n",
                static_cast<long long>(report.data->rows), report.data->fve[0], report.data->fve[1],
                report.data->l0);
    // Latents exclusive to the fine-tuned model (source 1), by Cohen's d when labels exist.
    const std::string metric = report.contrast ? "cohens_d" : "relative_norm_1";
    const auto ranking = crosscoder::rank_latents(report, metric, false, /*only_class=*/1);
    const auto values = crosscoder::latent_metric(report, metric);
    std::printf("latents exclusive to the fine-tuned model, by %s:\n", metric.c_str());
    for (std::size_t i = 0; i < ranking.size() && i < 10; ++i) {
      std::printf("  latent %6d  %s %.3f\n", ranking[i], metric.c_str(), values[ranking[i]]);
    }
    std::printf("report: %s.json, %s.html\n", prefix.c_str(), prefix.c_str());
  } catch (const crosscoder::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
