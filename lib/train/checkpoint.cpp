// Checkpoints (lib/gradgraph/train.hpp): one safetensors file holding every parameter and
// optimizer state, with what a resumed run needs in the JSON header's metadata: the counters,
// the batch iterator's position (the shuffling generator's state), the network's spec and
// description, the data's normalisation. Written atomically, so a crash mid-save leaves the
// previous checkpoint.
#include <gradgraph/safetensors.hpp>
#include <gradgraph/train.hpp>

#include <sstream>

namespace gg::train {

namespace {

const std::string kFormat = "gradgraph checkpoint";
const std::string kVersion = "1";

std::int64_t to_int(const CheckpointInfo& info, const std::string& key) {
  const std::string v = info.get(key);
  try {
    std::size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw std::runtime_error("metadata '" + key + "' is not an integer: '" + printable(v) + "'");
  }
}

}  // namespace

std::string CheckpointInfo::get(const std::string& key) const {
  auto it = metadata.find(key);
  if (it == metadata.end()) throw std::runtime_error("no '" + key + "' in its metadata");
  return it->second;
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  io::SafetensorsFile f = io::load_safetensors(path);
  CheckpointInfo info{f.metadata};
  auto it = info.metadata.find("format");
  if (it == info.metadata.end() || it->second != kFormat)
    throw std::runtime_error(path + ": not a gradgraph checkpoint (its metadata has no format \"" + kFormat + "\")");
  return info;
}

Rebuilt rebuild(const CheckpointInfo& info) {
  Rebuilt r;
  r.info = info;
  DType dt = DType::f32;
  const std::string d = info.get("dtype");
  if (d == "float64")
    dt = DType::f64;
  else if (d != "float32")
    throw std::runtime_error("metadata 'dtype' is '" + printable(d) + "', not float32 or float64");
  // "{28, 28}"
  std::vector<std::int64_t> dims;
  const std::string ex = info.get("example");
  std::istringstream is(ex);
  char c = 0;
  is >> c;
  if (c != '{') throw std::runtime_error("metadata 'example' is '" + printable(ex) + "', not a shape like {28, 28}");
  for (std::int64_t v = 0; is >> v;) {
    dims.push_back(v);
    is >> c;
  }
  if (dims.empty() || dims.size() > static_cast<std::size_t>(kMaxRank) || c != '}')
    throw std::runtime_error("metadata 'example' is '" + printable(ex) + "', not a shape like {28, 28}");
  try {
    r.graph = std::make_unique<Graph>(dt);
    r.model = classifier(*r.graph, nn::parse(info.get("spec")), Shape(dims), to_int(info, "classes"),
                         nn::parse_layout(info.get("layout")));
    if (info.metadata.count("normalization")) r.normalization = Normalization::parse(info.get("normalization"));
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  }
  return r;
}

Rebuilt rebuild(const std::string& checkpoint) {
  const CheckpointInfo info = read_checkpoint_info(checkpoint);
  try {
    return rebuild(info);
  } catch (const std::exception& e) {
    throw std::runtime_error(checkpoint + ": " + e.what());
  }
}

void Trainer::save(const std::string& path, const Batches* batches, const std::map<std::string, std::string>& extra) {
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const std::string& name : train_->param_names()) tensors.emplace_back(name, train_->param(name));
  std::map<std::string, std::string> meta = extra;
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["spec"] = model_.spec;
  meta["layout"] = nn::layout_name(model_.layout);
  meta["dtype"] = dtype_name(model_.x.dtype());
  meta["example"] = to_string(model_.example);
  meta["classes"] = std::to_string(model_.logits.shape()[model_.class_axis]);
  meta["graph"] = describe(*g_);
  meta["optimizer"] = opts_.optimizer.text();
  meta["schedule"] = opts_.schedule.text();
  meta["step"] = std::to_string(step_);
  meta["epoch"] = std::to_string(epoch_);
  meta["planned_steps"] = std::to_string(planned_steps_);
  if (batches) {
    const Batches::Position p = batches->position();
    meta["batch_size"] = std::to_string(batches->batch_size());
    meta["shuffle"] = batches->options().shuffle ? "true" : "false";
    meta["normalization"] = batches->options().normalization.text();
    meta["shift"] = std::to_string(batches->options().shift);
    meta["next_epoch"] = std::to_string(p.epoch);
    meta["next_batch"] = std::to_string(p.index);
    meta["shuffle_rng"] = p.rng;
  }
  io::save_safetensors(path, tensors, meta);
}

namespace {

// Runs f, turning any error into one line that starts with the file's path.
template <typename F>
void naming_file(const std::string& path, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw std::runtime_error(what.rfind(path, 0) == 0 ? what : path + ": " + what);
  }
}

}  // namespace

void Trainer::load(const std::string& path) { load_tensors(path, false); }

void Trainer::load_tensors(const std::string& path, bool optimizer_state_required) {
  naming_file(path, [&] {
    const io::SafetensorsFile f = io::load_safetensors(path);
    const CheckpointInfo info{f.metadata};
    if (f.metadata.count("format") && f.metadata.at("format") == kFormat) {
      if (info.get("spec") != model_.spec)
        throw std::runtime_error("a checkpoint of another network: '" + printable(info.get("spec")) + "', this one is '" + printable(model_.spec) + "'");
      if (info.get("dtype") != dtype_name(model_.x.dtype()))
        throw std::runtime_error("a " + info.get("dtype") + " checkpoint, this network is " + dtype_name(model_.x.dtype()));
    }
    for (const std::string& name : train_->param_names()) {
      const Tensor* t = nullptr;
      for (const auto& [n, v] : f.tensors)
        if (n == name) t = &v;
      if (!t) {
        // A new run may change the optimizer, whose state then starts fresh; the model's own
        // state (batch norm statistics) is part of the network and must be there.
        if (!optimizer_state_required && g_->find(name).id >= optimizer_nodes_from_) continue;
        throw std::runtime_error("no tensor '" + name + "' (is it a checkpoint of this network?)");
      }
      try {
        train_->set_param(name, t->view());
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(e.what());
      }
    }
  });
}

void Trainer::resume(const std::string& path, Batches& batches) {
  const CheckpointInfo info = read_checkpoint_info(path);
  // Another optimizer's state is not this one's: say so, not which of its tensors is missing.
  naming_file(path, [&] {
    const std::string saved = info.get("optimizer"), kind = saved.substr(0, saved.find(' '));
    if (kind != Optimizer::kind_name(opts_.optimizer.kind))
      throw std::runtime_error("saved with the " + printable(kind) + " optimizer, resumed with " +
                               Optimizer::kind_name(opts_.optimizer.kind) + " (resume with the same optimizer, or start a new run "
                               "from its parameters)");
  });
  load_tensors(path, true);
  naming_file(path, [&] {
    step_ = to_int(info, "step");
    epoch_ = to_int(info, "epoch");
    planned_steps_ = to_int(info, "planned_steps");
    if (to_int(info, "batch_size") != batches.batch_size())
      throw std::runtime_error("saved with batches of " + info.get("batch_size") + ", resumed with " +
                               std::to_string(batches.batch_size()));
    if (info.get("shuffle") != (batches.options().shuffle ? "true" : "false"))
      throw std::runtime_error("saved with shuffle=" + info.get("shuffle") + ", resumed without the same setting");
    // Checkpoints from before augmentation existed have no "shift": they trained without it.
    const auto saved_shift = info.metadata.find("shift");
    const std::string shift = saved_shift == info.metadata.end() ? "0" : saved_shift->second;
    if (shift != std::to_string(batches.options().shift))
      throw std::runtime_error("saved with shift=" + shift + ", resumed with shift=" + std::to_string(batches.options().shift));
    Batches::Position p;
    p.epoch = to_int(info, "next_epoch");
    p.index = to_int(info, "next_batch");
    p.rng = info.get("shuffle_rng");
    batches.seek(p);
  });
}

}  // namespace gg::train
