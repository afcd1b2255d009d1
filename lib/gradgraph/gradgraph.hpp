// Everything a user of gradgraph needs: #include <gradgraph/gradgraph.hpp>
#pragma once

#include <gradgraph/autodiff.hpp>
#include <gradgraph/backend.hpp>
#include <gradgraph/check.hpp>
#include <gradgraph/distributed.hpp>
#include <gradgraph/dot.hpp>
#include <gradgraph/graph.hpp>
#include <gradgraph/nn.hpp>
#include <gradgraph/ops.hpp>
#include <gradgraph/program.hpp>
#include <gradgraph/random.hpp>
#include <gradgraph/sparse.hpp>
#include <gradgraph/tensor.hpp>
#include <gradgraph/train.hpp>
