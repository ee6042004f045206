package config

// server.connections: one runner process registered with several forges,
// as forgejo-runner v12 and later configure it. Each connection is
//
//	server:
//	  connections:
//	    NAME:
//	      url: https://forge.example/
//	      uuid: ...
//	      token: ...            # or token_url: file:$CREDENTIALS_DIRECTORY/NAME
//	      labels: [...]         # default: runner.labels
//	      fetch_interval: 10s   # default: runner.fetch_interval
//
// token_url accepts only file: (a URL that fetched the token over the
// network would make the runner's secret depend on another server), with
// $CREDENTIALS_DIRECTORY expanded so that systemd's LoadCredential= can
// hand the token over without it being in the config.

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrNoConnection: neither server.connections nor a .runner file; the
// runner is not registered anywhere.
var ErrNoConnection = errors.New("no forge connection: register the runner first (provenix runner register)")

// credentialsDirEnv is where systemd puts LoadCredential= files.
const credentialsDirEnv = "CREDENTIALS_DIRECTORY"

// check validates a connection as written, without reading its token file
// (Connections does that): a config can be checked where the credentials
// are not.
func (c Connection) check() error {
	if c.URL == "" || c.UUID == "" {
		return errors.New("needs url and uuid")
	}
	switch {
	case c.Token != "" && c.TokenURL != "":
		return errors.New("has both token and token_url; keep one")
	case c.Token == "" && c.TokenURL == "":
		return errors.New("needs token or token_url")
	case c.TokenURL != "":
		// Stand in for $CREDENTIALS_DIRECTORY, which only the daemon's
		// environment has, to check the rest of the path.
		if _, err := tokenFilePath(c.TokenURL, func(string) string { return "/credentials" }); err != nil {
			return err
		}
	}
	if c.FetchInterval < 0 {
		return fmt.Errorf("fetch_interval %v is negative", c.FetchInterval)
	}
	if _, err := ParseLabels(c.Labels); err != nil {
		return fmt.Errorf("labels: %w", err)
	}
	return nil
}

// tokenFilePath turns a token_url into an absolute file path: "file:" +
// a path, or "file://" + an empty or "localhost" host + a path, where the
// path may use $CREDENTIALS_DIRECTORY (or ${CREDENTIALS_DIRECTORY}) and
// no other variable.
func tokenFilePath(tokenURL string, getenv func(string) string) (string, error) {
	rest, ok := strings.CutPrefix(tokenURL, "file:")
	if !ok {
		return "", fmt.Errorf("token_url %q: only file: URLs are accepted", tokenURL)
	}
	if strings.HasPrefix(rest, "//") {
		u, err := url.Parse(tokenURL)
		if err != nil {
			return "", fmt.Errorf("token_url %q: %w", tokenURL, err)
		}
		if u.Host != "" && u.Host != "localhost" {
			return "", fmt.Errorf("token_url %q: a file: URL names a local file, not one on host %q", tokenURL, u.Host)
		}
		rest = u.Path
	}
	var expandErr error
	p := os.Expand(rest, func(name string) string {
		if name != credentialsDirEnv {
			expandErr = fmt.Errorf("token_url %q: only $%s is expanded, not $%s", tokenURL, credentialsDirEnv, name)
			return ""
		}
		v := getenv(name)
		if v == "" {
			expandErr = fmt.Errorf("token_url %q: $%s is not set (systemd sets it for LoadCredential=)", tokenURL, credentialsDirEnv)
		}
		return v
	})
	if expandErr != nil {
		return "", expandErr
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("token_url %q: the path must be absolute (or start with $%s)", tokenURL, credentialsDirEnv)
	}
	return filepath.Clean(p), nil
}

// Registration is what a .runner file holds that a connection needs.
// runner/rpc reads the file (it imports this package, so this package
// cannot import it); rpc.Connections passes it here.
type Registration struct {
	Name   string
	URL    string
	UUID   string
	Token  string
	Labels []string
}

// ResolvedConnection is a connection as the daemon uses it: defaults
// applied and the token read.
type ResolvedConnection struct {
	// Name is the key under server.connections, or the registered runner
	// name for a .runner file.
	Name          string
	URL           string
	UUID          string
	Token         string
	Labels        []string
	FetchInterval time.Duration
}

// Connections returns the forges the runner serves, sorted by name: those
// of server.connections when there are any, else the one of the .runner
// registration reg (nil when there is none), so that callers handle one
// shape. A connection's labels default to runner.labels and its fetch
// interval to runner.fetch_interval; for a .runner registration,
// runner.labels win over the registered labels as in JobLabels. A token
// in token_url is read from its file here, each time, so a rotated
// credential is picked up on restart.
func (c *Config) Connections(reg *Registration) ([]ResolvedConnection, error) {
	if len(c.Server.Connections) == 0 {
		if reg == nil {
			return nil, ErrNoConnection
		}
		labels := reg.Labels
		if len(c.Runner.Labels) > 0 {
			labels = c.Runner.Labels
		}
		return []ResolvedConnection{{
			Name: reg.Name, URL: reg.URL, UUID: reg.UUID, Token: reg.Token,
			Labels: labels, FetchInterval: c.Runner.FetchInterval,
		}}, nil
	}
	names := slices.Sorted(maps.Keys(c.Server.Connections))
	out := make([]ResolvedConnection, 0, len(names))
	for _, name := range names {
		conn := c.Server.Connections[name]
		r := ResolvedConnection{Name: name, URL: conn.URL, UUID: conn.UUID, Token: conn.Token,
			Labels: conn.Labels, FetchInterval: conn.FetchInterval}
		if len(r.Labels) == 0 {
			r.Labels = c.Runner.Labels
		}
		if len(r.Labels) == 0 {
			return nil, fmt.Errorf("%w: server.connections.%s: %w", ErrConfig, name, ErrNoLabels)
		}
		if r.FetchInterval == 0 {
			r.FetchInterval = c.Runner.FetchInterval
		}
		if conn.TokenURL != "" {
			tok, err := readTokenURL(conn.TokenURL)
			if err != nil {
				return nil, fmt.Errorf("%w: server.connections.%s: %w", ErrConfig, name, err)
			}
			r.Token = tok
		}
		out = append(out, r)
	}
	return out, nil
}

func readTokenURL(tokenURL string) (string, error) {
	p, err := tokenFilePath(tokenURL, os.Getenv)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("token_url: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token_url: %s is empty", p)
	}
	return tok, nil
}
