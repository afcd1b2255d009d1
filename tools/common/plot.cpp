#include "plot.hpp"

#include <gradgraph/atomic_file.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <numbers>
#include <ostream>
#include <stdexcept>

#include <cairo.h>

namespace gg::tools {

namespace {

// Figure geometry, in pixels. The gap between the panels leaves room for the right panel's
// tick labels and axis title, as plotly's make_subplots(rows=1, cols=2) does.
constexpr int kWidth = 1200;
constexpr int kHeight = 500;
constexpr double kLeft = 84, kRight = 28, kGap = 112, kTop = 84, kBottom = 62;

struct Rgb {
  double r, g, b;
};
constexpr Rgb kInk{0.16, 0.16, 0.16};       // titles
constexpr Rgb kAxisInk{0.27, 0.27, 0.27};   // axis lines, ticks, tick labels
constexpr Rgb kGrid{0.90, 0.90, 0.90};
constexpr Rgb kBlue{0.122, 0.467, 0.706};   // matplotlib tab:blue
constexpr Rgb kOrange{1.0, 0.498, 0.055};   // matplotlib tab:orange
const char* const kFont = "DejaVu Sans";    // falls back through fontconfig if absent

void set_color(cairo_t* cr, Rgb c, double alpha = 1.0) { cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha); }

struct Point {
  double x, y;
};
// A series is a list of points; a NaN y marks a break in the line.
using Series = std::vector<Point>;

struct Range {
  double lo, hi;
};

// The x and y ranges of the finite points of some series, or nothing if there are none.
bool data_range(const std::vector<const Series*>& series, Range& xr, Range& yr) {
  bool any = false;
  xr = yr = {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
  for (const Series* s : series)
    for (const Point& p : *s) {
      if (!std::isfinite(p.y)) continue;
      any = true;
      xr = {std::min(xr.lo, p.x), std::max(xr.hi, p.x)};
      yr = {std::min(yr.lo, p.y), std::max(yr.hi, p.y)};
    }
  return any;
}

// Widens a range so lines do not touch the frame, and gives a constant series some height.
Range padded(Range r) {
  if (r.hi == r.lo) {
    double h = r.lo == 0 ? 1.0 : std::abs(r.lo) * 0.1;
    return {r.lo - h, r.hi + h};
  }
  double pad = (r.hi - r.lo) * 0.05;
  return {r.lo - pad, r.hi + pad};
}

// The smallest step of 1, 2 or 5 times a power of ten that gives at most `target` intervals
// over the range (matplotlib's MaxNLocator idea): round labels, never crowded.
double nice_step(Range r, int target, bool integer) {
  double raw = (r.hi - r.lo) / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double f : {1.0, 2.0, 5.0})
    if (f * mag >= raw * (1 - 1e-9)) {
      step = f * mag;
      break;
    }
  return integer ? std::max(step, 1.0) : step;
}

std::vector<double> ticks_for(Range r, double step) {
  std::vector<double> out;
  // Index-based so accumulated rounding cannot drop the last tick.
  for (double k = std::ceil(r.lo / step - 1e-9); k * step <= r.hi + step * 1e-9; ++k) out.push_back(k * step);
  return out;
}

// Tick labels with just enough decimals for the step: 0.05 -> "0.15", 20 -> "40", 5000 -> "5k".
std::string tick_label(double v, double step) {
  char buf[64];
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0"
  if (step >= 1000 && std::fmod(step, 1000) == 0 && std::abs(v) >= 1000) {
    std::snprintf(buf, sizeof buf, "%gk", v / 1000);
    return buf;
  }
  int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

enum class Align { left, center, right };

// Draws text with its horizontal anchor at x and its vertical centre at y (centre of the
// digits/caps height, so labels line up with ticks and grid lines).
void draw_text(cairo_t* cr, const std::string& s, double x, double y, double size, Align align,
               bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
  cairo_text_extents_t te;
  cairo_text_extents(cr, s.c_str(), &te);
  double dx = align == Align::left ? 0 : align == Align::center ? te.x_advance / 2 : te.x_advance;
  cairo_move_to(cr, x - dx, y + size * 0.36);
  cairo_show_text(cr, s.c_str());
}

double text_width(cairo_t* cr, const std::string& s, double size) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
  cairo_text_extents_t te;
  cairo_text_extents(cr, s.c_str(), &te);
  return te.x_advance;
}

struct Panel {
  double x0, y0, x1, y1;  // plot area in pixels: left, top, right, bottom
  Range xr, yr;           // data ranges mapped onto it
  double px(double x) const { return x0 + (x - xr.lo) / (xr.hi - xr.lo) * (x1 - x0); }
  double py(double y) const { return y1 - (y - yr.lo) / (yr.hi - yr.lo) * (y1 - y0); }
};

// Crisp 1-pixel lines: cairo puts a 1-wide stroke on a pixel centre only at half coordinates.
double snap(double v) { return std::floor(v) + 0.5; }

void draw_axes(cairo_t* cr, const Panel& p, const std::string& subplot_title, const std::string& xlabel,
               const std::string& ylabel) {
  const double tick_font = 12, label_font = 14;
  double xstep = nice_step(p.xr, 6, true), ystep = nice_step(p.yr, 6, false);
  auto xt = ticks_for(p.xr, xstep), yt = ticks_for(p.yr, ystep);

  cairo_set_line_width(cr, 1.0);
  set_color(cr, kGrid);
  for (double v : xt) {
    cairo_move_to(cr, snap(p.px(v)), p.y0);
    cairo_line_to(cr, snap(p.px(v)), p.y1);
  }
  for (double v : yt) {
    cairo_move_to(cr, p.x0, snap(p.py(v)));
    cairo_line_to(cr, p.x1, snap(p.py(v)));
  }
  cairo_stroke(cr);

  // Left and bottom axis lines with outward ticks.
  set_color(cr, kAxisInk);
  cairo_move_to(cr, snap(p.x0), p.y0);
  cairo_line_to(cr, snap(p.x0), snap(p.y1));
  cairo_line_to(cr, p.x1, snap(p.y1));
  for (double v : xt) {
    cairo_move_to(cr, snap(p.px(v)), snap(p.y1));
    cairo_line_to(cr, snap(p.px(v)), snap(p.y1) + 5);
  }
  for (double v : yt) {
    cairo_move_to(cr, snap(p.x0), snap(p.py(v)));
    cairo_line_to(cr, snap(p.x0) - 5, snap(p.py(v)));
  }
  cairo_stroke(cr);

  double max_label = 0;
  for (double v : xt) draw_text(cr, tick_label(v, xstep), p.px(v), p.y1 + 18, tick_font, Align::center);
  for (double v : yt) {
    std::string s = tick_label(v, ystep);
    max_label = std::max(max_label, text_width(cr, s, tick_font));
    draw_text(cr, s, p.x0 - 9, p.py(v), tick_font, Align::right);
  }

  set_color(cr, kInk);
  draw_text(cr, xlabel, (p.x0 + p.x1) / 2, p.y1 + 44, label_font, Align::center);
  cairo_save(cr);
  cairo_translate(cr, p.x0 - 9 - max_label - 14, (p.y0 + p.y1) / 2);
  cairo_rotate(cr, -std::numbers::pi / 2);
  draw_text(cr, ylabel, 0, 0, label_font, Align::center);
  cairo_restore(cr);
  draw_text(cr, subplot_title, (p.x0 + p.x1) / 2, p.y0 - 18, 15, Align::center);
}

// Keeps, per pixel column, the first, lowest, highest and last point (the "M4" reduction):
// the drawn line looks the same as with every point, but a 100k-iteration run stays cheap.
std::vector<Point> reduce_to_pixels(const std::vector<Point>& run) {
  if (run.size() < 4096) return run;
  std::vector<Point> out;
  std::size_t i = 0;
  while (i < run.size()) {
    std::size_t j = i;
    const double col = std::floor(run[i].x);
    std::size_t lo = i, hi = i;
    while (j < run.size() && std::floor(run[j].x) == col) {
      if (run[j].y < run[lo].y) lo = j;
      if (run[j].y > run[hi].y) hi = j;
      ++j;
    }
    std::size_t picks[4] = {i, std::min(lo, hi), std::max(lo, hi), j - 1};
    for (int k = 0; k < 4; ++k)
      if (k == 0 || picks[k] != picks[k - 1]) out.push_back(run[picks[k]]);
    i = j;
  }
  return out;
}

void draw_series(cairo_t* cr, const Panel& p, const Series& s, Rgb color, bool markers) {
  cairo_save(cr);
  cairo_rectangle(cr, p.x0 - 6, p.y0 - 6, p.x1 - p.x0 + 12, p.y1 - p.y0 + 12);
  cairo_clip(cr);
  set_color(cr, color);
  cairo_set_line_width(cr, 1.8);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);

  // Split at non-finite values into runs of pixel coordinates, each drawn as one polyline.
  std::vector<Point> run;
  auto flush = [&] {
    std::vector<Point> pts = reduce_to_pixels(run);
    for (std::size_t i = 0; i < pts.size(); ++i) (i ? cairo_line_to : cairo_move_to)(cr, pts[i].x, pts[i].y);
    cairo_stroke(cr);
    run.clear();
  };
  for (const Point& q : s) {
    if (std::isfinite(q.y))
      run.push_back({p.px(q.x), p.py(q.y)});
    else
      flush();
  }
  flush();

  // Isolated points (a one-point series, or a point between two NaNs) would not show as a line.
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool isolated = std::isfinite(s[i].y) && (i == 0 || !std::isfinite(s[i - 1].y)) &&
                    (i + 1 == s.size() || !std::isfinite(s[i + 1].y));
    if (!markers && !isolated) continue;
    cairo_new_sub_path(cr);
    cairo_arc(cr, p.px(s[i].x), p.py(s[i].y), 3.5, 0, 2 * std::numbers::pi);
  }
  cairo_fill(cr);
  cairo_restore(cr);
}

struct LegendEntry {
  std::string label;
  Rgb color;
  bool marker;
};

// Puts the legend in whichever inside corner of the panel covers the fewest data points.
void draw_legend(cairo_t* cr, const Panel& p, const std::vector<LegendEntry>& entries,
                 const std::vector<const Series*>& series) {
  const double font = 12, row = 20, pad = 8, sample = 26;
  double w = 0;
  for (const auto& e : entries) w = std::max(w, text_width(cr, e.label, font));
  w += 2 * pad + sample + 8;
  double h = 2 * pad + row * static_cast<double>(entries.size()) - 4;

  const double inset = 10;
  const Point corners[4] = {{p.x1 - inset - w, p.y1 - inset - h},  // lower right
                            {p.x1 - inset - w, p.y0 + inset},      // upper right
                            {p.x0 + inset, p.y1 - inset - h},      // lower left
                            {p.x0 + inset, p.y0 + inset}};         // upper left
  Point best = corners[0];
  std::size_t best_hits = std::numeric_limits<std::size_t>::max();
  for (const Point& c : corners) {
    std::size_t hits = 0;
    for (const Series* s : series)
      for (const Point& q : *s) {
        if (!std::isfinite(q.y)) continue;
        double x = p.px(q.x), y = p.py(q.y);
        if (x >= c.x - 4 && x <= c.x + w + 4 && y >= c.y - 4 && y <= c.y + h + 4) ++hits;
      }
    if (hits < best_hits) best_hits = hits, best = c;
  }

  cairo_rectangle(cr, snap(best.x), snap(best.y), std::round(w), std::round(h));
  cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
  cairo_fill_preserve(cr);
  set_color(cr, {0.8, 0.8, 0.8});
  cairo_set_line_width(cr, 1.0);
  cairo_stroke(cr);

  for (std::size_t i = 0; i < entries.size(); ++i) {
    double y = best.y + pad + row * static_cast<double>(i) + 6;
    double x = best.x + pad;
    set_color(cr, entries[i].color);
    cairo_set_line_width(cr, 1.8);
    cairo_move_to(cr, x, y);
    cairo_line_to(cr, x + sample, y);
    cairo_stroke(cr);
    if (entries[i].marker) {
      cairo_arc(cr, x + sample / 2, y, 3.5, 0, 2 * std::numbers::pi);
      cairo_fill(cr);
    }
    set_color(cr, kAxisInk);
    draw_text(cr, entries[i].label, x + sample + 8, y, font, Align::left);
  }
}

Series indexed(const std::vector<double>& v) {
  Series s;
  s.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) s.push_back({static_cast<double>(i + 1), v[i]});
  return s;
}

// Panel ranges: x from 0 to the last iteration; y from the data with a margin. A panel without
// any finite value still gets axes.
void fit(Panel& p, const std::vector<const Series*>& series) {
  Range xr, yr;
  if (!data_range(series, xr, yr)) xr = {0, 1}, yr = {0, 1};
  // A small margin on both sides keeps the first and last markers clear of the frame.
  double hi = std::max(xr.hi, 1.0);
  p.xr = {-0.02 * hi, 1.02 * hi};
  if (xr.hi == xr.lo) p.xr = {0, xr.hi + 1};  // a single point sits mid-panel, not on its edge
  p.yr = padded(yr);
}

struct SurfaceDeleter {
  void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
};
struct ContextDeleter {
  void operator()(cairo_t* c) const { cairo_destroy(c); }
};

cairo_status_t write_to_ostream(void* closure, const unsigned char* data, unsigned int length) {
  auto* os = static_cast<std::ostream*>(closure);
  os->write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(length));
  return *os ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

}  // namespace

void plot_training_curves(const std::string& png_path, const std::vector<double>& loss,
                          const std::vector<double>& accuracy, const std::string& title,
                          const std::vector<double>& test_accuracy, int test_every, const std::vector<double>& test_at) {
  const std::string where = "plot_training_curves: " + png_path + ": ";
  if (loss.empty()) throw std::invalid_argument(where + "the loss series is empty");
  if (accuracy.empty()) throw std::invalid_argument(where + "the accuracy series is empty");
  if (test_every < 0) throw std::invalid_argument(where + "test_every is negative");
  if (!test_at.empty() && test_at.size() != test_accuracy.size())
    throw std::invalid_argument(where + std::to_string(test_at.size()) + " test positions for " +
                                std::to_string(test_accuracy.size()) + " test accuracies");

  const Series loss_s = indexed(loss), train_s = indexed(accuracy);
  Series test_s;
  for (std::size_t k = 0; k < test_accuracy.size(); ++k) {
    double x = !test_at.empty() ? test_at[k]
               : test_every > 0 ? static_cast<double>(k + 1) * test_every
                              : std::round(static_cast<double>(k + 1) * static_cast<double>(accuracy.size()) /
                                           static_cast<double>(test_accuracy.size()));
    test_s.push_back({x, test_accuracy[k]});
  }

  std::unique_ptr<cairo_surface_t, SurfaceDeleter> surface(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, kWidth, kHeight));
  std::unique_ptr<cairo_t, ContextDeleter> ctx(cairo_create(surface.get()));
  cairo_t* cr = ctx.get();
  cairo_set_antialias(cr, CAIRO_ANTIALIAS_BEST);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);

  const double pw = (kWidth - kLeft - kRight - kGap) / 2;
  Panel left{kLeft, kTop, kLeft + pw, kHeight - kBottom, {}, {}};
  Panel right{kLeft + pw + kGap, kTop, kWidth - kRight, kHeight - kBottom, {}, {}};
  fit(left, {&loss_s});
  fit(right, {&train_s, &test_s});

  set_color(cr, kInk);
  draw_text(cr, title, kWidth / 2.0, 30, 19, Align::center);

  draw_axes(cr, left, "loss", "iteration", "loss");
  draw_series(cr, left, loss_s, kBlue, loss.size() <= 40);

  draw_axes(cr, right, "accuracy", "iteration", "accuracy (%)");
  draw_series(cr, right, train_s, kBlue, accuracy.size() <= 40);
  if (!test_s.empty()) {
    draw_series(cr, right, test_s, kOrange, true);
    draw_legend(cr, right, {{"train", kBlue, accuracy.size() <= 40}, {"test", kOrange, true}}, {&train_s, &test_s});
  }

  cairo_surface_flush(surface.get());
  if (cairo_status(cr) != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error(where + "drawing failed: " + cairo_status_to_string(cairo_status(cr)));

  // Through write_file_atomic rather than cairo_surface_write_to_png(name): a crash never leaves
  // half a PNG, and a bad directory is reported with the system's reason, not "write error".
  io::write_file_atomic(png_path, [&](std::ostream& os) {
    cairo_status_t st = cairo_surface_write_to_png_stream(surface.get(), write_to_ostream, &os);
    if (st != CAIRO_STATUS_SUCCESS && os)
      throw std::runtime_error(png_path + ": cannot encode PNG: " + cairo_status_to_string(st));
    // A stream error (st == WRITE_ERROR with a failed stream) is reported by write_file_atomic.
  });
}

namespace {

// ---------------------------------------------------------------------------------------------
// Shared by the confusion matrix and the image grid.

// The largest font size (down to min_size) at which `s` fits in max_width pixels.
double fit_font(cairo_t* cr, const std::string& s, double max_width, double size, double min_size) {
  double w = text_width(cr, s, size);
  if (w <= max_width) return size;
  return std::max(min_size, std::floor(size * max_width / w * 10) / 10);
}

// Encodes the surface as PNG into `png_path` through write_file_atomic (see plot_training_curves).
void write_png_atomic(cairo_surface_t* surface, cairo_t* cr, const std::string& png_path, const std::string& where) {
  cairo_surface_flush(surface);
  if (cairo_status(cr) != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error(where + "drawing failed: " + cairo_status_to_string(cairo_status(cr)));
  io::write_file_atomic(png_path, [&](std::ostream& os) {
    cairo_status_t st = cairo_surface_write_to_png_stream(surface, write_to_ostream, &os);
    if (st != CAIRO_STATUS_SUCCESS && os)
      throw std::runtime_error(png_path + ": cannot encode PNG: " + cairo_status_to_string(st));
  });
}

// White canvas with antialiased drawing.
struct Canvas {
  std::unique_ptr<cairo_surface_t, SurfaceDeleter> surface;
  std::unique_ptr<cairo_t, ContextDeleter> ctx;
  Canvas(int w, int h)
      : surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h)), ctx(cairo_create(surface.get())) {
    cairo_set_antialias(ctx.get(), CAIRO_ANTIALIAS_BEST);
    cairo_set_source_rgb(ctx.get(), 1, 1, 1);
    cairo_paint(ctx.get());
  }
};

// ---------------------------------------------------------------------------------------------
// Confusion matrix.

constexpr int kCmLeft = 160, kCmTop = 64, kCmRight = 110, kCmBottom = 64, kCmBottomTurned = 130;

// matplotlib's "Blues" colour map: near-white at 0, dark blue at 1.
Rgb blues(double t) {
  static constexpr Rgb stops[] = {{247, 251, 255}, {222, 235, 247}, {198, 219, 239}, {158, 202, 225}, {107, 174, 214},
                                  {66, 146, 198},  {33, 113, 181},  {8, 81, 156},    {8, 48, 107}};
  constexpr int last = static_cast<int>(std::size(stops)) - 1;
  t = std::clamp(t, 0.0, 1.0) * last;
  const int i = std::min(static_cast<int>(t), last - 1);
  const double f = t - i;
  const Rgb a = stops[i], b = stops[i + 1];
  return {(a.r + (b.r - a.r) * f) / 255, (a.g + (b.g - a.g) * f) / 255, (a.b + (b.b - a.b) * f) / 255};
}

// ---------------------------------------------------------------------------------------------
// Image grid.

constexpr int kGridMargin = 16, kGridTop = 56, kGridBottom = 8, kGridMinCaption = 140, kGridGap = 12,
              kGridCaption = 34;
constexpr std::int64_t kCairoMaxSide = 32767;

}  // namespace

void plot_confusion_matrix(const std::string& png_path, const std::vector<std::int64_t>& counts,
                           const std::vector<std::string>& class_names, const std::string& title) {
  const std::string where = "plot_confusion_matrix: " + png_path + ": ";
  const std::size_t n = class_names.size();
  if (n == 0) throw std::invalid_argument(where + "there are no classes");
  if (n > 100) throw std::invalid_argument(where + std::to_string(n) + " classes; at most 100 can be drawn");
  if (counts.size() != n * n)
    throw std::invalid_argument(where + std::to_string(counts.size()) + " counts for " + std::to_string(n) +
                                " classes; expected " + std::to_string(n * n) + " (classes x classes)");
  for (std::size_t i = 0; i < counts.size(); ++i)
    if (counts[i] < 0)
      throw std::invalid_argument(where + "negative count " + std::to_string(counts[i]) + " for true class " +
                                  std::to_string(i / n) + ", predicted class " + std::to_string(i % n));

  const int classes = static_cast<int>(n);
  const int c = std::max({12, std::min(64, 640 / classes), 192 / classes});
  const int side = classes * c;
  const int width = kCmLeft + side + kCmRight;
  Canvas probe(1, 1);  // for measuring text before the figure's size is known
  const double name_font = std::min(12.0, c * 0.8);
  bool turn = false;  // names along the bottom turned upright when any is wider than a column
  for (const std::string& name : class_names) turn = turn || text_width(probe.ctx.get(), name, name_font) > c - 4;
  const int bottom = turn ? kCmBottomTurned : kCmBottom;
  const int height = kCmTop + side + bottom;
  Canvas canvas(width, height);
  cairo_t* cr = canvas.ctx.get();

  // Cells: row-normalised shade, then the count in a colour that reads on it.
  for (int r = 0; r < classes; ++r) {
    double total = 0;
    for (int k = 0; k < classes; ++k) total += static_cast<double>(counts[static_cast<std::size_t>(r * classes + k)]);
    for (int k = 0; k < classes; ++k) {
      const std::int64_t count = counts[static_cast<std::size_t>(r * classes + k)];
      const double frac = total > 0 ? static_cast<double>(count) / total : 0.0;
      const double x = kCmLeft + k * c, y = kCmTop + r * c;
      set_color(cr, blues(frac));
      cairo_rectangle(cr, x, y, c, c);
      cairo_fill(cr);
      const std::string label = std::to_string(count);
      const double font = fit_font(cr, label, c - 4, std::min(13.0, c * 0.34), 5);
      if (font < 5.5 || text_width(cr, label, font) > c - 2) continue;  // no room for the number
      if (frac > 0.5)
        cairo_set_source_rgb(cr, 1, 1, 1);
      else
        set_color(cr, kInk);
      draw_text(cr, label, x + c / 2.0, y + c / 2.0, font, Align::center);
    }
  }
  set_color(cr, kAxisInk);
  cairo_set_line_width(cr, 1.0);
  cairo_rectangle(cr, kCmLeft - 0.5, kCmTop - 0.5, side + 1, side + 1);
  cairo_stroke(cr);

  // Class names: right-aligned left of each row, and under each column.
  const double row_room = kCmLeft - 8 - 36, col_room = kCmBottomTurned - 8 - 40;
  double widest = 0;
  for (int i = 0; i < classes; ++i) {
    const std::string& name = class_names[static_cast<std::size_t>(i)];
    const double mid = i * c + c / 2.0;
    const double font = fit_font(cr, name, row_room, name_font, 5);
    widest = std::max(widest, text_width(cr, name, font));
    draw_text(cr, name, kCmLeft - 8, kCmTop + mid, font, Align::right);
    if (!turn) {
      draw_text(cr, name, kCmLeft + mid, kCmTop + side + 14, name_font, Align::center);
    } else {
      cairo_save(cr);
      cairo_translate(cr, kCmLeft + mid, kCmTop + side + 8);
      cairo_rotate(cr, -std::numbers::pi / 2);
      draw_text(cr, name, 0, 0, fit_font(cr, name, col_room, name_font, 5), Align::right);
      cairo_restore(cr);
    }
  }

  // Axis titles and the figure title.
  set_color(cr, kInk);
  draw_text(cr, "predicted class", kCmLeft + side / 2.0, height - 22, 14, Align::center);
  cairo_save(cr);
  cairo_translate(cr, std::max(20.0, kCmLeft - 8 - widest - 22), kCmTop + side / 2.0);
  cairo_rotate(cr, -std::numbers::pi / 2);
  draw_text(cr, "true class", 0, 0, 14, Align::center);
  cairo_restore(cr);
  draw_text(cr, title, width / 2.0, 30, fit_font(cr, title, width - 20, 19, 8), Align::center);

  // Colour bar: the shade for each fraction, 1 at the top.
  const int bar_x = kCmLeft + side + 24, bar_w = 16;
  for (int y = 0; y < side; ++y) {
    set_color(cr, blues(1.0 - static_cast<double>(y) / std::max(1, side - 1)));
    cairo_rectangle(cr, bar_x, kCmTop + y, bar_w, 1);
    cairo_fill(cr);
  }
  set_color(cr, kAxisInk);
  cairo_rectangle(cr, bar_x - 0.5, kCmTop - 0.5, bar_w + 1, side + 1);
  cairo_stroke(cr);
  const std::vector<double> ticks = side >= 200 ? std::vector<double>{0, 0.25, 0.5, 0.75, 1} : std::vector<double>{0, 0.5, 1};
  for (double t : ticks) {
    const double y = snap(kCmTop + (1 - t) * (side - 1));
    cairo_move_to(cr, bar_x + bar_w, y);
    cairo_line_to(cr, bar_x + bar_w + 4, y);
    cairo_stroke(cr);
    char buf[16];
    std::snprintf(buf, sizeof buf, "%g", t);
    draw_text(cr, buf, bar_x + bar_w + 7, y, 11, Align::left);
  }
  cairo_save(cr);
  cairo_translate(cr, bar_x + bar_w + 58, kCmTop + side / 2.0);
  cairo_rotate(cr, -std::numbers::pi / 2);
  draw_text(cr, "fraction of the true class", 0, 0, fit_font(cr, "fraction of the true class", side, 12, 9), Align::center);
  cairo_restore(cr);

  write_png_atomic(canvas.surface.get(), cr, png_path, where);
}

void plot_image_grid(const std::string& png_path, const std::vector<std::vector<std::uint8_t>>& images,
                     std::int64_t width, std::int64_t height, const std::vector<std::string>& captions,
                     const std::string& title, int columns) {
  const std::string where = "plot_image_grid: " + png_path + ": ";
  if (width < 1 || height < 1 || width > 16384 || height > 16384)
    throw std::invalid_argument(where + "image size " + std::to_string(width) + "x" + std::to_string(height) +
                                "; width and height must each be 1..16384");
  if (columns < 1) throw std::invalid_argument(where + "columns is " + std::to_string(columns) + "; it must be at least 1");
  if (images.size() != captions.size())
    throw std::invalid_argument(where + std::to_string(images.size()) + " images but " + std::to_string(captions.size()) +
                                " captions; there must be one caption per image");
  const std::size_t pixels = static_cast<std::size_t>(width * height);
  for (std::size_t i = 0; i < images.size(); ++i)
    if (images[i].size() != pixels)
      throw std::invalid_argument(where + "image " + std::to_string(i) + " holds " + std::to_string(images[i].size()) +
                                  " pixels; a " + std::to_string(width) + "x" + std::to_string(height) + " image has " +
                                  std::to_string(pixels));

  const std::int64_t n = static_cast<std::int64_t>(images.size());
  const std::int64_t s = std::max<std::int64_t>(1, 96 / std::max(width, height));
  const std::int64_t tile_w = s * width, tile_h = s * height;
  const std::int64_t cw = std::max<std::int64_t>(tile_w, kGridMinCaption) + kGridGap;
  const std::int64_t ch = tile_h + kGridCaption + kGridGap;
  const std::int64_t cols = std::clamp<std::int64_t>(n, 1, columns);
  const std::int64_t rows = std::max<std::int64_t>(1, (n + cols - 1) / cols);
  const std::int64_t fig_w = 2 * kGridMargin + cols * cw, fig_h = kGridTop + rows * ch + kGridBottom;
  if (fig_w > kCairoMaxSide || fig_h > kCairoMaxSide)
    throw std::invalid_argument(where + "the grid would be " + std::to_string(fig_w) + "x" + std::to_string(fig_h) +
                                " pixels, more than cairo's " + std::to_string(kCairoMaxSide) +
                                " on a side; draw fewer or smaller images, or change columns");

  Canvas canvas(static_cast<int>(fig_w), static_cast<int>(fig_h));
  cairo_t* cr = canvas.ctx.get();
  set_color(cr, kInk);
  draw_text(cr, title, fig_w / 2.0, 28, fit_font(cr, title, static_cast<double>(fig_w - 20), 17, 8), Align::center);

  const int iw = static_cast<int>(width), ih = static_cast<int>(height);
  std::unique_ptr<cairo_surface_t, SurfaceDeleter> tile(cairo_image_surface_create(CAIRO_FORMAT_RGB24, iw, ih));
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(kGridMargin + (i % cols) * cw + (cw - tile_w) / 2);
    const double y = static_cast<double>(kGridTop + (i / cols) * ch);

    // The image as an RGB24 surface (gray: R = G = B), then scaled with nearest-neighbour.
    cairo_surface_flush(tile.get());
    unsigned char* data = cairo_image_surface_get_data(tile.get());
    const int stride = cairo_image_surface_get_stride(tile.get());
    const std::vector<std::uint8_t>& img = images[static_cast<std::size_t>(i)];
    for (int r = 0; r < ih; ++r)
      for (int k = 0; k < iw; ++k) {
        const std::uint32_t v = img[static_cast<std::size_t>(r) * static_cast<std::size_t>(iw) + static_cast<std::size_t>(k)];
        const std::uint32_t p = 0xff000000u | v << 16 | v << 8 | v;
        std::memcpy(data + static_cast<std::ptrdiff_t>(r) * stride + 4 * k, &p, 4);
      }
    cairo_surface_mark_dirty(tile.get());
    cairo_save(cr);
    cairo_translate(cr, x, y);
    cairo_scale(cr, static_cast<double>(s), static_cast<double>(s));
    cairo_set_source_surface(cr, tile.get(), 0, 0);
    cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
    cairo_rectangle(cr, 0, 0, iw, ih);
    cairo_fill(cr);
    cairo_restore(cr);

    set_color(cr, {0.7, 0.7, 0.7});
    cairo_set_line_width(cr, 1.0);
    cairo_rectangle(cr, x - 0.5, y - 0.5, static_cast<double>(tile_w + 1), static_cast<double>(tile_h + 1));
    cairo_stroke(cr);

    const std::string& caption = captions[static_cast<std::size_t>(i)];
    set_color(cr, kInk);
    draw_text(cr, caption, x + static_cast<double>(tile_w) / 2, y + static_cast<double>(tile_h) + 14,
              fit_font(cr, caption, static_cast<double>(cw - 6), 11, 6), Align::center);
  }
  if (n == 0) {
    set_color(cr, kAxisInk);
    draw_text(cr, "(no images)", fig_w / 2.0, kGridTop + ch / 2.0, 12, Align::center);
  }

  write_png_atomic(canvas.surface.get(), cr, png_path, where);
}

}  // namespace gg::tools
