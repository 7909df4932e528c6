#include "crosscoder/dataset.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "dataset_pass.hpp"

namespace crosscoder {

namespace {

// One column (a source, the labels, the token ids or the document ids) within one shard: `rows`
// elements (or rows of `width` elements) at `base`, rows `row_stride` elements apart, each starting
// `offset` elements in. `owner` keeps the memory (a mapping or a vector) alive.
struct Column {
  std::shared_ptr<const void> owner;
  const std::byte* base = nullptr;
  StoredType type = StoredType::F32;
  std::int64_t row_stride = 0;
  std::int64_t offset = 0;
  std::string where;  // "file" or "file[tensor]", for messages
};

struct Shard {
  std::int64_t first_row = 0;
  std::int64_t rows = 0;
  std::vector<Column> sources;
  std::optional<Column> labels;
  std::optional<Column> token_ids;
  std::optional<Column> document_ids;
};

std::size_t stored_size(StoredType type) noexcept {
  switch (type) {
    case StoredType::F32:
    case StoredType::I32:
      return 4;
    case StoredType::F16:
    case StoredType::BF16:
      return 2;
    case StoredType::I8:
      return 1;
  }
  return 1;
}

// Converts `count` stored elements starting at `p` to float32.
void convert_to_float(StoredType type, const std::byte* p, std::int64_t count, float* out) {
  const auto n = static_cast<std::size_t>(count);
  switch (type) {
    case StoredType::F32:
      std::memcpy(out, p, n * sizeof(float));
      return;
    case StoredType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, p + 2 * i, 2);
        out[i] = io::half_to_float(bits);
      }
      return;
    case StoredType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, p + 2 * i, 2);
        out[i] = io::bfloat16_to_float(bits);
      }
      return;
    case StoredType::I8:
    case StoredType::I32:
      break;
  }
  throw Error("internal: an integer column read as activations");
}

std::int64_t load_integer(StoredType type, const std::byte* p) {
  if (type == StoredType::I8) return static_cast<std::int8_t>(*p);
  std::int32_t value;
  std::memcpy(&value, p, 4);
  return value;
}

std::optional<StoredType> npy_type(const std::string& descr, std::optional<StoredType> declared) {
  if (descr == "<f4") return StoredType::F32;
  if (descr == "<f2") return StoredType::F16;
  if ((descr == "<u2" || descr == "<i2") && declared == StoredType::BF16) return StoredType::BF16;
  if (descr == "|i1") return StoredType::I8;
  if (descr == "<i4") return StoredType::I32;
  return std::nullopt;
}

std::optional<StoredType> safetensors_type(io::DType dtype) {
  switch (dtype) {
    case io::DType::F32:
      return StoredType::F32;
    case io::DType::F16:
      return StoredType::F16;
    case io::DType::BF16:
      return StoredType::BF16;
    case io::DType::I8:
      return StoredType::I8;
    case io::DType::I32:
      return StoredType::I32;
    default:
      return std::nullopt;
  }
}

bool is_float(StoredType type) {
  return type == StoredType::F32 || type == StoredType::F16 || type == StoredType::BF16;
}

std::string shape_string(const std::vector<std::size_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}
std::string shape_string(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Opens each file once, however many shard entries name it.
class FileCache {
 public:
  std::shared_ptr<const io::NpyFile> npy(const std::filesystem::path& path) {
    auto& slot = npy_[path];
    if (!slot) slot = std::make_shared<const io::NpyFile>(io::NpyFile::open(path));
    return slot;
  }
  std::shared_ptr<const io::SafetensorsFile> safetensors(const std::filesystem::path& path) {
    auto& slot = safetensors_[path];
    if (!slot) slot = std::make_shared<const io::SafetensorsFile>(io::SafetensorsFile::open(path));
    return slot;
  }

 private:
  std::map<std::filesystem::path, std::shared_ptr<const io::NpyFile>> npy_;
  std::map<std::filesystem::path, std::shared_ptr<const io::SafetensorsFile>> safetensors_;
};

bool has_extension(const std::filesystem::path& path, const char* extension) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == extension;
}

}  // namespace

struct ActivationDataset::Impl {
  std::string kind;  // "manifest", "npy per source", ...
  std::vector<std::filesystem::path> inputs;
  std::vector<std::string> names;
  std::vector<StoredType> source_types;
  int width = 0;
  std::int64_t rows = 0;
  std::vector<Shard> shards;
  std::optional<StoredType> label_type, token_type, document_type;
  std::string labels_from;  // where attached labels came from

  const Shard& shard_of(std::int64_t row) const {
    const auto it =
        std::upper_bound(shards.begin(), shards.end(), row,
                         [](std::int64_t r, const Shard& s) { return r < s.first_row; });
    return *(it - 1);
  }

  void check_range(std::int64_t first, std::int64_t count, const char* what) const {
    if (first < 0 || count < 0 || first > rows || count > rows - first) {
      throw Error(fmt::format("dataset {}: {} rows [{}, {}) are outside [0, {})", describe_inputs(),
                              what, first, first + count, rows));
    }
  }

  std::string describe_inputs() const {
    std::vector<std::string> text;
    for (const auto& path : inputs) text.push_back(path.string());
    return fmt::format("{}", fmt::join(text, ", "));
  }

  // The integer column `member` of rows [first, first + count), converted to T.
  template <typename T>
  void read_integers(std::optional<Column> Shard::*member, std::int64_t first, std::int64_t count,
                     T* out) const {
    for_each_piece(first, count,
                   [&](const Shard& shard, std::int64_t local, std::int64_t n, std::int64_t done) {
                     const Column& column = *(shard.*member);
                     const std::size_t item = stored_size(column.type);
                     for (std::int64_t r = 0; r < n; ++r) {
                       out[done + r] = static_cast<T>(load_integer(
                           column.type, column.base + static_cast<std::size_t>(local + r) * item));
                     }
                   });
  }

  // Calls visit(shard, first row within the shard, count, offset into the request) for each
  // piece of [first, first + count).
  template <typename Visit>
  void for_each_piece(std::int64_t first, std::int64_t count, Visit&& visit) const {
    std::int64_t done = 0;
    while (done < count) {
      const Shard& shard = shard_of(first + done);
      const std::int64_t local = first + done - shard.first_row;
      const std::int64_t n = std::min(count - done, shard.rows - local);
      visit(shard, local, n, done);
      done += n;
    }
  }
};

ActivationDataset::ActivationDataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ActivationDataset::ActivationDataset(ActivationDataset&&) noexcept = default;
ActivationDataset& ActivationDataset::operator=(ActivationDataset&&) noexcept = default;
ActivationDataset::~ActivationDataset() = default;

int ActivationDataset::sources() const noexcept { return static_cast<int>(impl_->names.size()); }
int ActivationDataset::width() const noexcept { return impl_->width; }
std::int64_t ActivationDataset::rows() const noexcept { return impl_->rows; }
const std::vector<std::string>& ActivationDataset::source_names() const noexcept {
  return impl_->names;
}
bool ActivationDataset::has_labels() const noexcept { return impl_->label_type.has_value(); }
bool ActivationDataset::has_token_ids() const noexcept { return impl_->token_type.has_value(); }
bool ActivationDataset::has_document_ids() const noexcept {
  return impl_->document_type.has_value();
}
std::size_t ActivationDataset::shards() const noexcept { return impl_->shards.size(); }

namespace {

// A 2-D activation column from a .npy file, checked against what the caller expects.
Column npy_activation_column(const std::shared_ptr<const io::NpyFile>& file,
                             std::optional<StoredType> declared, std::int64_t expected_rows,
                             int expected_width, const std::string& context) {
  const auto& shape = file->shape();
  const std::string where = file->path().string();
  const auto type = npy_type(file->descr(), declared);
  if (!type || !is_float(*type)) {
    throw Error(fmt::format(
        "{}{}: dtype '{}' is not an activation type (float32 '<f4', float16 '<f2'; bfloat16 as "
        "'<u2'/'<i2' only through a manifest with \"dtype\": \"bf16\")",
        context, where, file->descr()));
  }
  if (declared && *type != *declared) {
    throw Error(fmt::format("{}{}: holds {} ('{}') but the manifest says {}", context, where,
                            to_string(*type), file->descr(), to_string(*declared)));
  }
  if (shape.size() != 2 ||
      (expected_rows >= 0 && static_cast<std::int64_t>(shape[0]) != expected_rows) ||
      (expected_width > 0 && static_cast<int>(shape[1]) != expected_width)) {
    throw Error(fmt::format("{}{}: shape {} but expected [{}, {}]", context, where,
                            shape_string(shape),
                            expected_rows >= 0 ? std::to_string(expected_rows) : "rows",
                            expected_width > 0 ? std::to_string(expected_width) : "width"));
  }
  Column column;
  column.owner = file;
  column.base = file->data().data();
  column.type = *type;
  column.row_stride = static_cast<std::int64_t>(shape[1]);
  column.where = where;
  return column;
}

Column safetensors_column(const std::shared_ptr<const io::SafetensorsFile>& file,
                          const std::string& tensor, std::optional<StoredType> declared,
                          std::int64_t expected_rows, int expected_width, bool activations,
                          const std::string& context) {
  const std::string where = fmt::format("{}[{}]", file->path().string(), tensor);
  if (!file->contains(tensor)) {
    throw Error(fmt::format("{}{}: no tensor \"{}\" (it has: {})", context, file->path().string(),
                            tensor, fmt::join(file->names(), ", ")));
  }
  const io::TensorInfo& info = file->info(tensor);
  const auto type = safetensors_type(info.dtype);
  if (!type || is_float(*type) != activations) {
    throw Error(fmt::format("{}{}: dtype {} is not {}", context, where, io::to_string(info.dtype),
                            activations ? "F32, F16 or BF16" : "I8 or I32"));
  }
  if (declared && *type != *declared) {
    throw Error(fmt::format("{}{}: holds {} but the manifest says {}", context, where,
                            to_string(*type), to_string(*declared)));
  }
  const std::size_t rank = activations ? 2 : 1;
  if (info.shape.size() != rank || (expected_rows >= 0 && info.shape[0] != expected_rows) ||
      (activations && expected_width > 0 && info.shape[1] != expected_width)) {
    throw Error(fmt::format("{}{}: shape {} but expected {}", context, where,
                            shape_string(info.shape),
                            activations ? fmt::format("[{}, {}]", expected_rows, expected_width)
                                        : fmt::format("[{}]", expected_rows)));
  }
  Column column;
  column.owner = file;
  column.base = info.data.data();
  column.type = *type;
  column.row_stride = activations ? info.shape[1] : 1;
  column.where = where;
  return column;
}

Column npy_integer_column(const std::shared_ptr<const io::NpyFile>& file,
                          std::optional<StoredType> declared, std::int64_t expected_rows,
                          const std::string& context) {
  const std::string where = file->path().string();
  const auto type = npy_type(file->descr(), std::nullopt);
  if (!type || is_float(*type)) {
    throw Error(fmt::format("{}{}: dtype '{}' is not int8 ('|i1') or int32 ('<i4')", context, where,
                            file->descr()));
  }
  if (declared && *type != *declared) {
    throw Error(fmt::format("{}{}: holds {} ('{}') but the manifest says {}", context, where,
                            to_string(*type), file->descr(), to_string(*declared)));
  }
  if (file->shape().size() != 1 || static_cast<std::int64_t>(file->shape()[0]) != expected_rows) {
    throw Error(fmt::format("{}{}: shape {} but expected [{}]", context, where,
                            shape_string(file->shape()), expected_rows));
  }
  Column column;
  column.owner = file;
  column.base = file->data().data();
  column.type = *type;
  column.row_stride = 1;
  column.where = where;
  return column;
}

// Labels must fit in int8 and token ids in int32; int32 labels are checked once, here.
void check_label_values(const Column& column, std::int64_t rows) {
  if (column.type != StoredType::I32) return;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t value = load_integer(column.type, column.base + 4 * r);
    if (value < -128 || value > 127) {
      throw Error(
          fmt::format("{}: label {} at row {} does not fit in int8 (use 1 for positive, "
                      "0 for negative, -1 to ignore)",
                      column.where, value, r));
    }
  }
}

}  // namespace

ActivationDataset ActivationDataset::open_manifest(const std::filesystem::path& manifest_path) {
  const DatasetManifest manifest = read_manifest(manifest_path);
  auto impl = std::make_unique<Impl>();
  impl->kind = "manifest";
  impl->inputs = {std::filesystem::absolute(manifest_path)};
  impl->width = manifest.width;
  impl->rows = manifest.rows();
  for (const ManifestColumn& source : manifest.sources) {
    impl->names.push_back(source.name);
    impl->source_types.push_back(source.dtype);
  }
  if (manifest.labels) impl->label_type = manifest.labels->dtype;
  if (manifest.token_ids) impl->token_type = manifest.token_ids->dtype;
  if (manifest.document_ids) impl->document_type = manifest.document_ids->dtype;
  FileCache files;
  const std::string context = fmt::format("manifest {}: ", manifest_path.string());
  const auto open_column_unchecked = [&](const ManifestShard& entry, StoredType declared,
                                         bool activations) {
    if (!entry.tensor.empty() || has_extension(entry.path, ".safetensors")) {
      if (entry.tensor.empty()) {
        throw Error(fmt::format("{}{}: a safetensors shard needs \"tensor\"", context,
                                entry.path.string()));
      }
      return safetensors_column(files.safetensors(entry.path), entry.tensor, declared, entry.rows,
                                manifest.width, activations, context);
    }
    const auto file = files.npy(entry.path);
    return activations ? npy_activation_column(file, declared, entry.rows, manifest.width, context)
                       : npy_integer_column(file, declared, entry.rows, context);
  };
  // Errors name the shard's file; say which manifest entry listed it too.
  const auto open_column = [&](const ManifestShard& entry, StoredType declared, bool activations,
                               const std::string& key) {
    try {
      return open_column_unchecked(entry, declared, activations);
    } catch (const Error& error) {
      std::string message = error.what();
      if (message.rfind(context, 0) == 0) message.erase(0, context.size());
      throw Error(fmt::format("{}{}: {}", context, key, message));
    }
  };
  std::int64_t first_row = 0;
  for (std::size_t i = 0; i < manifest.sources.front().shards.size(); ++i) {
    Shard shard;
    shard.first_row = first_row;
    shard.rows = manifest.sources.front().shards[i].rows;
    for (std::size_t m = 0; m < manifest.sources.size(); ++m) {
      const ManifestColumn& source = manifest.sources[m];
      shard.sources.push_back(open_column(source.shards[i], source.dtype, true,
                                          fmt::format("sources[{}].shards[{}]", m, i)));
    }
    if (manifest.labels) {
      shard.labels = open_column(manifest.labels->shards[i], manifest.labels->dtype, false,
                                 fmt::format("labels.shards[{}]", i));
      check_label_values(*shard.labels, shard.rows);
    }
    if (manifest.token_ids)
      shard.token_ids = open_column(manifest.token_ids->shards[i], manifest.token_ids->dtype, false,
                                    fmt::format("token_ids.shards[{}]", i));
    if (manifest.document_ids) {
      shard.document_ids =
          open_column(manifest.document_ids->shards[i], manifest.document_ids->dtype, false,
                      fmt::format("document_ids.shards[{}]", i));
    }
    first_row += shard.rows;
    impl->shards.push_back(std::move(shard));
  }
  return ActivationDataset(std::move(impl));
}

ActivationDataset ActivationDataset::open(const std::vector<std::filesystem::path>& inputs) {
  if (inputs.empty()) throw Error("--data: no input given");
  if (inputs.size() == 1 && has_extension(inputs[0], ".json")) return open_manifest(inputs[0]);
  for (const auto& path : inputs) {
    if (has_extension(path, ".json") ||
        (inputs.size() > 1 && has_extension(path, ".safetensors"))) {
      throw Error(fmt::format("--data {}: a manifest or safetensors file must be the only input",
                              path.string()));
    }
  }
  auto impl = std::make_unique<Impl>();
  for (const auto& path : inputs) impl->inputs.push_back(std::filesystem::absolute(path));
  FileCache files;
  Shard shard;

  if (has_extension(inputs[0], ".safetensors")) {
    impl->kind = "safetensors";
    const auto file = files.safetensors(inputs[0]);
    std::vector<std::string> names;
    const auto listed = file->metadata().find("sources");
    if (listed != file->metadata().end()) {
      nlohmann::json json;
      try {
        json = nlohmann::json::parse(listed->second);
      } catch (const nlohmann::json::exception&) {
      }
      if (!json.is_array() || json.empty() ||
          !std::all_of(json.begin(), json.end(), [](const auto& v) { return v.is_string(); })) {
        throw Error(fmt::format("{}: __metadata__ \"sources\" must be a JSON list of tensor names",
                                inputs[0].string()));
      }
      for (const auto& name : json) names.push_back(name.template get<std::string>());
    } else {
      for (const std::string& name : file->names()) {
        const io::TensorInfo& info = file->info(name);
        const auto type = safetensors_type(info.dtype);
        if (info.shape.size() == 2 && type && is_float(*type)) names.push_back(name);
      }
      std::sort(names.begin(), names.end());
      if (names.empty()) {
        throw Error(fmt::format("{}: no 2-D float tensor [rows, width] to use as a source",
                                inputs[0].string()));
      }
    }
    const io::TensorInfo& first = file->info(names[0]);
    const std::int64_t rows = first.shape.size() == 2 ? first.shape[0] : -1;
    const int width = first.shape.size() == 2 ? static_cast<int>(first.shape[1]) : 0;
    const std::string context = "--data: ";
    for (const std::string& name : names) {
      shard.sources.push_back(
          safetensors_column(file, name, std::nullopt, rows, width, true, context));
      impl->names.push_back(name);
    }
    impl->rows = rows;
    impl->width = width;
    if (file->contains("labels")) {
      shard.labels = safetensors_column(file, "labels", std::nullopt, rows, 0, false, context);
      check_label_values(*shard.labels, rows);
    }
    // Token ids and document ids: optional 1-D I32 tensors named so.
    const auto int32_column = [&](const std::string& name) -> std::optional<Column> {
      if (!file->contains(name)) return std::nullopt;
      Column column = safetensors_column(file, name, std::nullopt, rows, 0, false, context);
      // safetensors_column let through I8 or I32.
      if (column.type != StoredType::I32)
        throw Error(fmt::format("{}: {} must be I32, not I8", column.where, name));
      return column;
    };
    shard.token_ids = int32_column("token_ids");
    shard.document_ids = int32_column("document_ids");
  } else if (inputs.size() == 1 && files.npy(inputs[0])->shape().size() == 3) {
    impl->kind = "npy [rows, sources, width]";
    const auto file = files.npy(inputs[0]);
    const auto& shape = file->shape();
    const auto type = npy_type(file->descr(), std::nullopt);
    if (!type || !is_float(*type)) {
      throw Error(fmt::format("{}: dtype '{}' is not float32 or float16", inputs[0].string(),
                              file->descr()));
    }
    impl->rows = static_cast<std::int64_t>(shape[0]);
    impl->width = static_cast<int>(shape[2]);
    for (std::size_t m = 0; m < shape[1]; ++m) {
      Column column;
      column.owner = file;
      column.base = file->data().data();
      column.type = *type;
      column.row_stride = static_cast<std::int64_t>(shape[1] * shape[2]);
      column.offset = static_cast<std::int64_t>(m * shape[2]);
      column.where = fmt::format("{}[:, {}]", inputs[0].string(), m);
      shard.sources.push_back(std::move(column));
      impl->names.push_back(fmt::format("source{}", m));
    }
  } else {
    impl->kind = "npy per source";
    const auto first = files.npy(inputs[0]);
    if (first->shape().size() != 2) {
      throw Error(
          fmt::format("{}: shape {}; expected [rows, width] per source, or one file "
                      "[rows, sources, width]",
                      inputs[0].string(), shape_string(first->shape())));
    }
    impl->rows = static_cast<std::int64_t>(first->shape()[0]);
    impl->width = static_cast<int>(first->shape()[1]);
    for (const auto& path : inputs) {
      shard.sources.push_back(
          npy_activation_column(files.npy(path), std::nullopt, impl->rows, impl->width, ""));
      impl->names.push_back(path.stem().string());
    }
  }
  if (impl->rows <= 0 || impl->width <= 0 || shard.sources.empty()) {
    throw Error(fmt::format("{}: the dataset is empty ({} rows of width {})", inputs[0].string(),
                            impl->rows, impl->width));
  }
  for (const Column& column : shard.sources) impl->source_types.push_back(column.type);
  if (shard.labels) impl->label_type = shard.labels->type;
  if (shard.token_ids) impl->token_type = shard.token_ids->type;
  if (shard.document_ids) impl->document_type = shard.document_ids->type;
  shard.rows = impl->rows;
  impl->shards.push_back(std::move(shard));
  return ActivationDataset(std::move(impl));
}

void ActivationDataset::read_source(int source, std::int64_t first, std::int64_t count,
                                    float* out) const {
  if (source < 0 || source >= sources()) {
    throw Error(fmt::format("dataset {}: no source {} (it has {})", impl_->describe_inputs(),
                            source, sources()));
  }
  impl_->check_range(first, count, "source");
  const int d = impl_->width;
  impl_->for_each_piece(
      first, count, [&](const Shard& shard, std::int64_t local, std::int64_t n, std::int64_t done) {
        const Column& column = shard.sources[static_cast<std::size_t>(source)];
        const std::size_t item = stored_size(column.type);
        for (std::int64_t r = 0; r < n; ++r) {
          const std::byte* p =
              column.base +
              static_cast<std::size_t>((local + r) * column.row_stride + column.offset) * item;
          convert_to_float(column.type, p, d, out + (done + r) * d);
        }
      });
}

void ActivationDataset::read(std::int64_t first, std::int64_t count, float* out) const {
  impl_->check_range(first, count, "activation");
  const int M = sources();
  const int d = impl_->width;
  const std::int64_t row_size = static_cast<std::int64_t>(M) * d;
  impl_->for_each_piece(
      first, count, [&](const Shard& shard, std::int64_t local, std::int64_t n, std::int64_t done) {
        for (int m = 0; m < M; ++m) {
          const Column& column = shard.sources[static_cast<std::size_t>(m)];
          const std::size_t item = stored_size(column.type);
          for (std::int64_t r = 0; r < n; ++r) {
            const std::byte* p =
                column.base +
                static_cast<std::size_t>((local + r) * column.row_stride + column.offset) * item;
            float* destination = out + (done + r) * row_size + static_cast<std::int64_t>(m) * d;
            convert_to_float(column.type, p, d, destination);
            // A sum is finite only if every term is: one cheap pass instead of d branches.
            float sum = 0.0f;
            for (int j = 0; j < d; ++j) sum += destination[j] * 0.0f;
            if (sum != 0.0f) {
              for (int j = 0; j < d; ++j) {
                if (!std::isfinite(destination[j])) {
                  throw Error(
                      fmt::format("{}: non-finite value {} at row {} (dataset row {}), "
                                  "column {} of source \"{}\"",
                                  column.where, destination[j], local + r,
                                  shard.first_row + local + r, j, impl_->names[m]));
                }
              }
            }
          }
        }
      });
}

void ActivationDataset::read_labels(std::int64_t first, std::int64_t count,
                                    std::int8_t* out) const {
  if (!has_labels())
    throw Error(fmt::format("dataset {}: has no labels", impl_->describe_inputs()));
  impl_->check_range(first, count, "label");
  impl_->read_integers(&Shard::labels, first, count, out);
}

void ActivationDataset::read_token_ids(std::int64_t first, std::int64_t count,
                                       std::int32_t* out) const {
  if (!has_token_ids()) {
    throw Error(fmt::format("dataset {}: has no token ids", impl_->describe_inputs()));
  }
  impl_->check_range(first, count, "token id");
  impl_->read_integers(&Shard::token_ids, first, count, out);
}

void ActivationDataset::read_document_ids(std::int64_t first, std::int64_t count,
                                          std::int32_t* out) const {
  if (!has_document_ids()) {
    throw Error(fmt::format("dataset {}: has no document ids", impl_->describe_inputs()));
  }
  impl_->check_range(first, count, "document id");
  impl_->read_integers(&Shard::document_ids, first, count, out);
}

void ActivationDataset::attach_labels(const std::filesystem::path& path) {
  const io::NpyFile file = io::NpyFile::open(path);
  if (file.shape().size() != 1 || static_cast<std::int64_t>(file.shape()[0]) != rows()) {
    throw Error(fmt::format("--labels {}: shape {} but the data has {} rows: expected [{}]",
                            path.string(), shape_string(file.shape()), rows(), rows()));
  }
  const std::vector<std::int64_t> values = file.read_int();  // refuses non-integer dtypes
  auto labels = std::make_shared<std::vector<std::int8_t>>(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (values[i] < -128 || values[i] > 127) {
      throw Error(
          fmt::format("--labels {}: label {} at row {} does not fit in int8 (use 1 for "
                      "positive, 0 for negative, -1 to ignore)",
                      path.string(), values[i], i));
    }
    (*labels)[i] = static_cast<std::int8_t>(values[i]);
  }
  for (Shard& shard : impl_->shards) {
    Column column;
    column.owner = labels;
    column.base = reinterpret_cast<const std::byte*>(labels->data() + shard.first_row);
    column.type = StoredType::I8;
    column.row_stride = 1;
    column.where = path.string();
    shard.labels = std::move(column);
  }
  impl_->label_type = StoredType::I8;
  impl_->labels_from = std::filesystem::absolute(path).string();
}

std::string ActivationDataset::identity() const {
  std::vector<std::string> paths;
  for (const auto& path : impl_->inputs) paths.push_back(path.string());
  return fmt::format("dataset:{};rows={};sources={};width={}", fmt::join(paths, ";"), rows(),
                     sources(), width());
}

std::string ActivationDataset::describe() const {
  std::string text = fmt::format("{} ({})\n", impl_->describe_inputs(), impl_->kind);
  text += fmt::format("  rows: {}\n  sources: {} of width {}\n  shards: {}\n", rows(), sources(),
                      width(), shards());
  for (int m = 0; m < sources(); ++m) {
    const Column& first = impl_->shards.front().sources[static_cast<std::size_t>(m)];
    text += fmt::format("  source {} \"{}\": {}, first shard {}\n", m, impl_->names[m],
                        to_string(impl_->source_types[m]), first.where);
  }
  if (impl_->label_type) {
    text += fmt::format("  labels: {}{}\n", to_string(*impl_->label_type),
                        impl_->labels_from.empty() ? "" : " from " + impl_->labels_from);
  }
  if (impl_->token_type) text += fmt::format("  token ids: {}\n", to_string(*impl_->token_type));
  if (impl_->document_type)
    text += fmt::format("  document ids: {}\n", to_string(*impl_->document_type));
  return text;
}

DatasetCheck check_dataset(const ActivationDataset& dataset, const PassControl& pass) {
  DatasetCheck check;
  check.rows = dataset.rows();
  std::vector<std::int8_t> labels;
  // Reading is the check: ActivationDataset::read throws at the first NaN or infinity.
  detail::for_each_chunk(dataset, 0, dataset.rows(), pass, "check",
                         [&](std::int64_t begin, std::int64_t n, std::span<const float>) {
                           if (!dataset.has_labels()) return;
                           labels.resize(static_cast<std::size_t>(n));
                           dataset.read_labels(begin, n, labels.data());
                           for (const std::int8_t label : labels) {
                             check.positives += label == 1;
                             check.negatives += label == 0;
                           }
                         });
  if (dataset.has_labels()) check.ignored = check.rows - check.positives - check.negatives;
  return check;
}

}  // namespace crosscoder
