// How the page writes numbers, in one place (tests/serve/test_serve_page_format.py runs it under Node).
// Probabilities all get one decimal, so neighbours compare: "12.3%", "0.4%", "<0.1%" (never "0%": a softmax is
// never zero, and a value rounded to 0.0% beside "<0.1%" reads as smaller than it), ">99.9%" (never "100%").
// An accuracy is a count over photos: 1 is "100%", 0 is "0%", others one decimal.
"use strict";

(function (root) {
  function probability(x) {
    if (x < 0.0005) return "<0.1%";
    if (x >= 0.9995) return ">99.9%";
    return (100 * x).toFixed(1) + "%";
  }

  function accuracy(x) {
    if (x === 0 || x === 1) return 100 * x + "%";
    return probability(x);
  }

  root.headstartFormat = { probability: probability, accuracy: accuracy };
})(typeof window !== "undefined" ? window : globalThis);
