// The parameter store: every param and state of a graph in one persistent, 64-byte aligned arena,
// in creation order, each entry padded to 64 bytes. Programs compiled with share_params_with
// share one store (an evaluation program sees the training program's weights).
#include "program_impl.hpp"

#include <gradgraph/init.hpp>

#include <cstring>

namespace gg::detail {

ParamStore::ParamStore(const Graph& g) : graph(&g) {
  for (int i = 0; i < g.size(); ++i) {
    const Node& n = g.node(i);
    if (n.op->storage != Storage::persistent) continue;
    std::size_t b = 0;
    try {
      b = checked_bytes(n.out().shape, n.out().dtype);
    } catch (const std::exception& e) {
      throw std::overflow_error("parameter '" + n.name + "': " + e.what());
    }
    entries.push_back({n.name, i, n.out().dtype, n.out().shape, n.init, (n.op->flags & kTrainable) != 0, bytes});
    // b <= 2^62, so the padding cannot wrap; the sum of many can.
    if (__builtin_add_overflow(bytes, (b + 63) / 64 * 64, &bytes) || bytes > (std::size_t{1} << 62))
      throw std::overflow_error("parameter '" + n.name + "' " + to_string(n.out().shape) +
                                ": the graph's parameters do not fit in memory");
  }
  arena = static_cast<std::byte*>(aligned_alloc64(bytes));
  std::memset(arena, 0, bytes);
}

ParamStore::~ParamStore() { aligned_free(arena); }

const ParamStore::Entry* ParamStore::by_graph_id(int id) const {
  for (const Entry& e : entries)
    if (e.graph_id == id) return &e;
  return nullptr;
}

const ParamStore::Entry& ParamStore::by_name(const std::string& name) const {
  for (const Entry& e : entries)
    if (e.name == name) return e;
  throw std::invalid_argument("program has no parameter or state named '" + name + "'");
}

void ParamStore::init(Generator& rng) {
  for (const Entry& e : entries) initialize(e.init, view(e), rng);
}

}  // namespace gg::detail
