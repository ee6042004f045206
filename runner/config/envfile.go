package config

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadEnvFile reads KEY=VALUE lines. Blank lines and lines starting with
// # are skipped, an "export " prefix is allowed, and a value wholly in
// double quotes is unquoted with Go's rules (\n, \", ...) while one in
// single quotes is taken literally. Anything else is an error naming the
// line: a typo in an env file should not quietly drop a variable.
func ReadEnvFile(r io.Reader) (map[string]string, error) {
	env := make(map[string]string)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !validEnvKey(k) {
			return nil, fmt.Errorf("%w: line %d: want KEY=VALUE", ErrConfig, n)
		}
		v = strings.TrimSpace(v)
		switch {
		case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
			u, err := strconv.Unquote(v)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: bad quoted value: %w", ErrConfig, n, err)
			}
			v = u
		case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
			v = v[1 : len(v)-1]
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return env, nil
}

func validEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
