package main

import (
	"context"
	"strings"
	"testing"
)

// TestUsageExitCodes: cobra's own command-line errors are usage errors
// (exit 2) with a hint naming the help to read; help itself exits 0.
func TestUsageExitCodes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown command", []string{"biuld"}, []string{`unknown command "biuld" for "provenix"`, "Did you mean this?", "Run 'provenix --help' for usage."}},
		{"unknown flag", []string{"build", "--no-such-flag", "x.nix"}, []string{"unknown flag: --no-such-flag", "Run 'provenix build --help' for usage."}},
		{"unknown flag before the command", []string{"--no-such-flag", "verify"}, []string{"unknown flag: --no-such-flag", "Run 'provenix --help' for usage."}},
		{"bad flag value", []string{"verify", "--quorum", "many", "/nix/store/x"}, []string{`invalid argument "many" for "--quorum"`, "Run 'provenix verify --help' for usage."}},
		{"missing required flag", []string{"feedback", "status", "--state", "success"}, []string{`required flag(s) "system" not set`, "Run 'provenix feedback status --help' for usage."}},
		{"too few arguments", []string{"build"}, []string{"requires at least 1 arg(s)", "Run 'provenix build --help' for usage."}},
		{"unexpected argument", []string{"up", "extra"}, []string{`unknown command "extra" for "provenix up"`, "Run 'provenix up --help' for usage."}},
		{"diff without a path", []string{"diff"}, []string{"accepts 1 arg(s), received 0", "Run 'provenix diff --help' for usage."}},
		{"nix argument without value", []string{"build", "x.nix", "--arg"}, []string{"provenix: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := cli(t, ctx, tc.args...)
			if code != exitUsageErr {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, exitUsageErr, stdout, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
	// An error of the command itself is not a command-line error: no hint.
	if _, stderr, code := cli(t, ctx, "verify", "--key", "/no/such.pub", "/nix/store/x"); code != exitUsageErr || strings.Contains(stderr, "--help") {
		t.Errorf("a missing key file: exit %d\n%s", code, stderr)
	}
	for _, args := range [][]string{{"--help"}, {"build", "--help"}, {"help", "runner"}} {
		if stdout, stderr, code := cli(t, ctx, args...); code != exitOK || !strings.Contains(stdout, "Usage:") {
			t.Errorf("%v: exit %d\n%s\n%s", args, code, stdout, stderr)
		}
	}
}
