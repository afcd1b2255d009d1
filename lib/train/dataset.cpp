// Data sets as bytes, their splits and normalisation (lib/gradgraph/train.hpp).
#include <gradgraph/idx.hpp>
#include <gradgraph/random.hpp>
#include <gradgraph/train.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <sstream>

namespace gg::train {

std::string Normalization::text() const {
  std::ostringstream os;
  os.precision(17);
  os << "divisor=" << divisor << " mean=" << mean << " std=" << std;
  return os.str();
}

Normalization Normalization::parse(const std::string& text) {
  Normalization n;
  std::istringstream is(text);
  std::string d, m, s;
  is >> d >> m >> s;
  try {
    if (d.rfind("divisor=", 0) != 0 || m.rfind("mean=", 0) != 0 || s.rfind("std=", 0) != 0) throw std::invalid_argument("");
    n.divisor = std::stod(d.substr(8));
    n.mean = std::stod(m.substr(5));
    n.std = std::stod(s.substr(4));
  } catch (const std::exception&) {
    throw std::invalid_argument("normalisation '" + printable(text) + "' is not 'divisor=D mean=M std=S'");
  }
  if (!(n.divisor > 0) || !(n.std > 0) || !std::isfinite(n.mean))
    throw std::invalid_argument("normalisation '" + printable(text) + "': divisor and std must be positive");
  return n;
}

std::pair<Dataset, Dataset> Dataset::split(std::int64_t validation, std::uint64_t seed) const {
  if (validation < 0 || validation >= count)
    throw std::invalid_argument(name + ": cannot hold out " + std::to_string(validation) + " of " + std::to_string(count) +
                                " examples for validation");
  std::vector<std::int64_t> order(static_cast<std::size_t>(count));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  Generator rng(RngKind::standard, seed);
  rng.shuffle(order);
  std::vector<std::int64_t> val(order.end() - validation, order.end()), keep(order.begin(), order.end() - validation);
  std::sort(val.begin(), val.end());
  std::sort(keep.begin(), keep.end());
  auto take = [&](const std::vector<std::int64_t>& idx, const std::string& suffix) {
    Dataset d;
    d.name = name + suffix;
    d.count = static_cast<std::int64_t>(idx.size());
    d.example = example;
    d.classes = classes;
    const std::size_t f = static_cast<std::size_t>(features());
    d.pixels.resize(idx.size() * f);
    d.labels.resize(idx.size());
    for (std::size_t k = 0; k < idx.size(); ++k) {
      const std::size_t i = static_cast<std::size_t>(idx[k]);
      std::copy_n(pixels.begin() + static_cast<std::ptrdiff_t>(i * f), f, d.pixels.begin() + static_cast<std::ptrdiff_t>(k * f));
      d.labels[k] = labels[i];
    }
    return d;
  };
  return {take(keep, " (training part)"), take(val, " (validation part)")};
}

Dataset load_idx(const std::string& dir, const std::string& prefix) {
  data::Split s = data::load_split(dir, prefix);
  Dataset d;
  d.name = dir + "/" + prefix;
  d.count = s.count;
  d.example = Shape{s.rows, s.cols};
  d.pixels = std::move(s.images);
  d.labels.assign(s.labels.begin(), s.labels.end());
  d.classes = 10;
  return d;
}

std::vector<std::string> class_names(const std::string& data_dir, std::int64_t classes) {
  std::string lower = data_dir;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::vector<std::string> out;
  if (lower.find("fashion") != std::string::npos && classes == 10)
    return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  for (std::int64_t c = 0; c < classes; ++c) out.push_back(std::to_string(c));
  return out;
}

}  // namespace gg::train
