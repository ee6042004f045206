//go:build !race

package cachepush

// raceSlowdown: see race_test.go.
const raceSlowdown = 1
