#include "crosscoder/activation_writer.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <set>

#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/log.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder {

namespace {

bool valid_file_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  for (const char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return false;
  }
  return true;
}

}  // namespace

ActivationWriter::ActivationWriter(std::filesystem::path directory, ActivationWriterOptions options)
    : directory_(std::move(directory)), options_(std::move(options)) {
  const std::string where = fmt::format("ActivationWriter {}", directory_.string());
  if (options_.source_names.empty()) throw Error(where + ": no source names");
  if (options_.width <= 0)
    throw Error(fmt::format("{}: width {} must be positive", where, options_.width));
  if (options_.shard_rows <= 0) {
    throw Error(fmt::format("{}: shard_rows {} must be positive", where, options_.shard_rows));
  }
  std::string descr;
  switch (options_.dtype) {
    case StoredType::F32:
      descr = "<f4";
      break;
    case StoredType::F16:
      descr = "<f2";
      break;
    case StoredType::BF16:
      descr = "<u2";
      break;
    default:
      throw Error(fmt::format("{}: activations are stored as f32, f16 or bf16, not {}", where,
                              to_string(options_.dtype)));
  }
  std::set<std::string> seen;
  for (const std::string& name : options_.source_names) {
    if (!valid_file_name(name) || name == "labels" || name == "tokens") {
      throw Error(
          fmt::format("{}: source name \"{}\" must be letters, digits, '.', '_' or '-' "
                      "(and not \"labels\" or \"tokens\")",
                      where, name));
    }
    // Reserved only with document ids, so that writers that named a source so still work.
    if (options_.document_ids && name == "documents") {
      throw Error(fmt::format(
          "{}: source name \"documents\" is the document ids' file prefix; rename the source",
          where));
    }
    if (!seen.insert(name).second)
      throw Error(fmt::format("{}: source name \"{}\" twice", where, name));
  }
  std::error_code error;
  std::filesystem::create_directories(directory_, error);
  if (error)
    throw Error(fmt::format("{}: cannot create the directory: {}", where, error.message()));
  if (!options_.overwrite && std::filesystem::exists(directory_ / "manifest.json")) {
    throw Error(fmt::format("{}: manifest.json exists; remove it or set overwrite", where));
  }
  for (const std::string& name : options_.source_names) {
    PendingColumn column;
    column.file_prefix = name;
    column.descr = descr;
    column.element_size = options_.dtype == StoredType::F32 ? 4 : 2;
    column.row_elements = options_.width;
    column.manifest.name = name;
    column.manifest.dtype = options_.dtype;
    sources_.push_back(std::move(column));
  }
  labels_ = {"labels", "|i1", 1, 1, 0, {}, {"labels", StoredType::I8, {}}};
  token_ids_ = {"tokens", "<i4", 4, 1, 0, {}, {"token_ids", StoredType::I32, {}}};
  document_ids_ = {"documents", "<i4", 4, 1, 0, {}, {"document_ids", StoredType::I32, {}}};
}

ActivationWriter::~ActivationWriter() {
  if (!closed_) {
    log_message(LogLevel::warning,
                fmt::format("ActivationWriter {}: destroyed without close(); no manifest was "
                            "written",
                            directory_.string()));
  }
}

void ActivationWriter::write_shard(PendingColumn& column) {
  const auto rows = static_cast<std::int64_t>(column.pending.size() / column.element_size /
                                              static_cast<std::size_t>(column.row_elements));
  if (rows == 0) return;
  const std::filesystem::path path =
      directory_ / fmt::format("{}-{:05}.npy", column.file_prefix, column.manifest.shards.size());
  std::vector<std::size_t> shape{static_cast<std::size_t>(rows)};
  if (&column != &labels_ && &column != &token_ids_ && &column != &document_ids_)
    shape.push_back(static_cast<std::size_t>(column.row_elements));
  io::write_npy_raw(path, shape, column.descr, column.pending);
  column.manifest.shards.push_back({path, "", rows});
  column.pending.clear();
}

void ActivationWriter::add_rows(PendingColumn& column, const std::byte* data, std::int64_t rows) {
  const std::size_t row_bytes = column.element_size * static_cast<std::size_t>(column.row_elements);
  while (rows > 0) {
    const std::int64_t pending_rows = static_cast<std::int64_t>(column.pending.size() / row_bytes);
    const std::int64_t take = std::min(rows, options_.shard_rows - pending_rows);
    column.pending.insert(column.pending.end(), data,
                          data + static_cast<std::size_t>(take) * row_bytes);
    column.rows += take;
    data += static_cast<std::size_t>(take) * row_bytes;
    rows -= take;
    if (pending_rows + take == options_.shard_rows) write_shard(column);
  }
}

void ActivationWriter::append(int source, std::span<const float> rows) {
  std::lock_guard lock(mutex_);
  const std::string where = fmt::format("ActivationWriter {}", directory_.string());
  if (closed_) throw Error(where + ": append after close()");
  if (source < 0 || source >= static_cast<int>(sources_.size())) {
    throw Error(fmt::format("{}: no source {} (there are {})", where, source, sources_.size()));
  }
  PendingColumn& column = sources_[static_cast<std::size_t>(source)];
  if (rows.size() % static_cast<std::size_t>(options_.width) != 0) {
    throw Error(fmt::format("{}: {} values for source \"{}\" are not whole rows of width {}", where,
                            rows.size(), column.manifest.name, options_.width));
  }
  converted_.resize(rows.size() * column.element_size);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const float value = rows[i];
    if (!std::isfinite(value)) {
      throw Error(fmt::format("{}: non-finite value {} in source \"{}\" at appended row {}", where,
                              value, column.manifest.name,
                              column.rows + static_cast<std::int64_t>(i) / options_.width));
    }
    if (options_.dtype == StoredType::F32) {
      std::memcpy(&converted_[4 * i], &value, 4);
    } else {
      const std::uint16_t bits = options_.dtype == StoredType::F16 ? io::float_to_half(value)
                                                                   : io::float_to_bfloat16(value);
      std::memcpy(&converted_[2 * i], &bits, 2);
    }
  }
  add_rows(column, converted_.data(), static_cast<std::int64_t>(rows.size()) / options_.width);
}

void ActivationWriter::append_all(std::span<const float> rows) {
  const std::size_t row_size = sources_.size() * static_cast<std::size_t>(options_.width);
  if (rows.size() % row_size != 0) {
    throw Error(fmt::format("ActivationWriter {}: {} values are not whole rows of {} sources × {}",
                            directory_.string(), rows.size(), sources_.size(), options_.width));
  }
  const std::size_t n = rows.size() / row_size;
  std::vector<float> one(n * static_cast<std::size_t>(options_.width));
  for (std::size_t m = 0; m < sources_.size(); ++m) {
    for (std::size_t r = 0; r < n; ++r) {
      std::copy_n(rows.data() + r * row_size + m * static_cast<std::size_t>(options_.width),
                  options_.width, one.data() + r * static_cast<std::size_t>(options_.width));
    }
    append(static_cast<int>(m), one);
  }
}

void ActivationWriter::append_integers(PendingColumn& column, bool expected, const char* what,
                                       std::span<const std::byte> values) {
  std::lock_guard lock(mutex_);
  if (closed_ || !expected) {
    throw Error(
        fmt::format("ActivationWriter {}: {}", directory_.string(),
                    closed_ ? "append after close()" : fmt::format("created without {}", what)));
  }
  add_rows(column, values.data(), static_cast<std::int64_t>(values.size() / column.element_size));
}

void ActivationWriter::append_labels(std::span<const std::int8_t> labels) {
  append_integers(labels_, options_.labels, "labels", std::as_bytes(labels));
}

void ActivationWriter::append_token_ids(std::span<const std::int32_t> token_ids) {
  append_integers(token_ids_, options_.token_ids, "token ids", std::as_bytes(token_ids));
}

void ActivationWriter::append_document_ids(std::span<const std::int32_t> document_ids) {
  append_integers(document_ids_, options_.document_ids, "document ids",
                  std::as_bytes(document_ids));
}

std::int64_t ActivationWriter::rows(int source) const {
  std::lock_guard lock(mutex_);
  if (source < 0 || source >= static_cast<int>(sources_.size())) {
    throw Error(fmt::format("ActivationWriter {}: no source {}", directory_.string(), source));
  }
  return sources_[static_cast<std::size_t>(source)].rows;
}

std::filesystem::path ActivationWriter::close() {
  std::lock_guard lock(mutex_);
  const std::string where = fmt::format("ActivationWriter {}", directory_.string());
  if (closed_) throw Error(where + ": closed twice");
  std::vector<const PendingColumn*> columns;
  for (const PendingColumn& column : sources_) columns.push_back(&column);
  if (options_.labels) columns.push_back(&labels_);
  if (options_.token_ids) columns.push_back(&token_ids_);
  if (options_.document_ids) columns.push_back(&document_ids_);
  for (const PendingColumn* column : columns) {
    if (column->rows != columns.front()->rows) {
      throw Error(
          fmt::format("{}: \"{}\" has {} rows but \"{}\" has {}; every column needs the "
                      "same rows",
                      where, column->manifest.name, column->rows, columns.front()->manifest.name,
                      columns.front()->rows));
    }
  }
  if (columns.front()->rows == 0) throw Error(where + ": no rows were appended");
  closed_ = true;
  DatasetManifest manifest;
  manifest.width = options_.width;
  for (PendingColumn& column : sources_) {
    write_shard(column);
    manifest.sources.push_back(column.manifest);
  }
  if (options_.labels) {
    write_shard(labels_);
    manifest.labels = labels_.manifest;
  }
  if (options_.token_ids) {
    write_shard(token_ids_);
    manifest.token_ids = token_ids_.manifest;
  }
  if (options_.document_ids) {
    write_shard(document_ids_);
    manifest.document_ids = document_ids_.manifest;
  }
  const std::filesystem::path path = directory_ / "manifest.json";
  const std::string text = manifest_to_json(manifest, directory_);
  io::write_file_atomically(
      path, [&](std::FILE* stream) { io::write_bytes(stream, text.data(), text.size(), path); });
  return path;
}

}  // namespace crosscoder
