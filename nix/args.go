package nix

import (
	"errors"
	"fmt"
	"strings"
)

// ErrArgs means a command line's Nix arguments (--arg, --argstr) are
// malformed.
var ErrArgs = errors.New("nix: bad --arg/--argstr")

// JoinArgs rewrites a command line so that every Nix argument flag among
// flags (names without dashes, e.g. "arg", "argstr") carries one NAME=VALUE
// token: Nix's own two-token form `--arg NAME EXPR` becomes `--arg
// NAME=EXPR`, and `--arg NAME=EXPR` (or `--arg=NAME=EXPR`) stays. The
// token after the flag is NAME=VALUE when it contains '=' (a Nix argument
// name never does); otherwise it is NAME and the token after it is the
// value. Tokens after "--" are left alone.
func JoinArgs(cmdline []string, flags ...string) ([]string, error) {
	isFlag := func(s string) bool {
		for _, f := range flags {
			if s == "--"+f {
				return true
			}
		}
		return false
	}
	out := make([]string, 0, len(cmdline))
	for i := 0; i < len(cmdline); i++ {
		tok := cmdline[i]
		if tok == "--" {
			return append(out, cmdline[i:]...), nil
		}
		flag, val, inline := strings.Cut(tok, "=")
		if !isFlag(flag) {
			out = append(out, tok)
			continue
		}
		if !inline {
			if i+1 >= len(cmdline) {
				return nil, fmt.Errorf("%w: %s needs NAME VALUE or NAME=VALUE", ErrArgs, flag)
			}
			i++
			val = cmdline[i]
		}
		if !strings.Contains(val, "=") {
			// NAME, then the value as its own token.
			if val == "" || i+1 >= len(cmdline) {
				return nil, fmt.Errorf("%w: %s %s needs a value (NAME VALUE or NAME=VALUE)", ErrArgs, flag, val)
			}
			i++
			val += "=" + cmdline[i]
		}
		out = append(out, flag, val)
	}
	return out, nil
}

// SplitArg reads one Nix argument written as NAME=VALUE or, as Nix takes
// it on its command line, NAME VALUE (separated by white space): the
// first word is NAME=VALUE when it contains '='. It is the form of one
// line of a list of arguments (the action's args input).
func SplitArg(s string) (name, value string, err error) {
	s = strings.TrimSpace(s)
	first := s
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		first = s[:i]
	}
	if strings.Contains(first, "=") {
		name, value, _ = strings.Cut(s, "=")
	} else if first != s {
		name, value = first, strings.TrimLeft(s[len(first):], " \t")
	} else {
		return "", "", fmt.Errorf("%w: %q: want NAME=VALUE or NAME VALUE", ErrArgs, s)
	}
	name = strings.TrimSpace(name)
	if name == "" {
		return "", "", fmt.Errorf("%w: %q: no name", ErrArgs, s)
	}
	return name, value, nil
}
