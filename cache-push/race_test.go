//go:build race

package cachepush

// raceSlowdown scales the time bounds of tests that measure fairness: the
// race detector makes every handler several times slower, and `make test`
// runs it beside other packages' tests.
const raceSlowdown = 4
