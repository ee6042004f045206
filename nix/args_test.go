package nix

import (
	"errors"
	"slices"
	"testing"
)

func TestJoinArgs(t *testing.T) {
	tests := []struct {
		in, want []string
		err      bool
	}{
		{in: []string{"build", "f.nix", "--arg", "busybox", "/usr/bin/busybox", "-A", "top"}, want: []string{"build", "f.nix", "--arg", "busybox=/usr/bin/busybox", "-A", "top"}},
		{in: []string{"--arg", "busybox=/usr/bin/busybox"}, want: []string{"--arg", "busybox=/usr/bin/busybox"}},
		{in: []string{"--arg=busybox=/x"}, want: []string{"--arg", "busybox=/x"}},
		{in: []string{"--arg=busybox", "/x"}, want: []string{"--arg", "busybox=/x"}},
		// The value may hold '=' and spaces: only the name decides.
		{in: []string{"--argstr", "message", "a=b c", "--arg", "cfg", "{ a = 1; }"}, want: []string{"--argstr", "message=a=b c", "--arg", "cfg={ a = 1; }"}},
		{in: []string{"--argstr", "empty="}, want: []string{"--argstr", "empty="}},
		{in: []string{"--attr", "x", "--", "--arg", "n"}, want: []string{"--attr", "x", "--", "--arg", "n"}},
		{in: []string{"--argument", "x"}, want: []string{"--argument", "x"}},
		{in: []string{"--arg"}, err: true},
		{in: []string{"--arg", "busybox"}, err: true},
		{in: []string{"--arg="}, err: true},
	}
	for _, tc := range tests {
		got, err := JoinArgs(tc.in, "arg", "argstr")
		if tc.err {
			if !errors.Is(err, ErrArgs) {
				t.Errorf("JoinArgs(%q) = %q, %v; want ErrArgs", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("JoinArgs(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestSplitArg(t *testing.T) {
	tests := []struct{ in, name, value string }{
		{"busybox=/usr/bin/busybox", "busybox", "/usr/bin/busybox"},
		{"busybox /usr/bin/busybox", "busybox", "/usr/bin/busybox"},
		{"  cfg   { a = 1; } ", "cfg", "{ a = 1; }"},
		{"cfg={ a = 1; }", "cfg", "{ a = 1; }"},
		{"message=hello world", "message", "hello world"},
		{"message\thello", "message", "hello"},
		{"empty=", "empty", ""},
	}
	for _, tc := range tests {
		n, v, err := SplitArg(tc.in)
		if err != nil || n != tc.name || v != tc.value {
			t.Errorf("SplitArg(%q) = %q, %q, %v", tc.in, n, v, err)
		}
	}
	for _, bad := range []string{"lonely", "=x", ""} {
		if _, _, err := SplitArg(bad); !errors.Is(err, ErrArgs) {
			t.Errorf("SplitArg(%q): %v, want ErrArgs", bad, err)
		}
	}
}
