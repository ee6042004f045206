// Package config holds the configuration of the provenix runner daemon: a
// YAML file whose log, runner and host sections mean what they mean in
// forgejo-runner's config.yaml, so that an existing file can be reused,
// plus a provenix section for what only this runner has (NATS, signing,
// the job user). It also parses runner labels and derives default ones
// from the host's Nix.
//
// Loading is strict: an unknown key is an error naming it, because a
// misspelt key silently falling back to a default is how a runner ends up
// with capacity 1 or the wrong tenant. The forgejo-runner sections that
// make no sense without Docker (cache, container) are the exception: they
// are accepted and reported in Config.Warnings, so a copied file loads.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrConfig marks a configuration file that cannot be used.
var ErrConfig = errors.New("invalid runner configuration")

// Defaults. They are forgejo-runner's where the key is shared.
const (
	DefaultFile           = ".runner"
	DefaultCapacity       = 1
	DefaultTimeout        = 3 * time.Hour
	DefaultShutdown       = 3 * time.Hour
	DefaultFetchTimeout   = 5 * time.Second
	DefaultFetchInterval  = 2 * time.Second
	DefaultReportInterval = time.Second
	DefaultReportRetries  = 10
	DefaultReportDelay    = 100 * time.Millisecond
	DefaultTenant         = "default"
	// DefaultBuilderID empty: the runner names itself after its
	// registration, forgejo-runner:<name>, one id per key.
	DefaultBuilderID = ""
	// DefaultJobUser is a dedicated account: "nobody" is shared with other
	// services and, on Debian, may not use the Nix daemon.
	DefaultJobUser = "provenix-job"
)

// Config is the daemon's configuration.
type Config struct {
	Log      Log      `yaml:"log"`
	Runner   Runner   `yaml:"runner"`
	Host     Host     `yaml:"host"`
	Server   Server   `yaml:"server"`
	Provenix Provenix `yaml:"provenix"`

	// Sections of forgejo-runner's file that are read and ignored.
	Cache     yaml.Node `yaml:"cache"`
	Container yaml.Node `yaml:"container"`

	// Warnings are what the caller should log after loading: ignored
	// sections, an env_file that does not exist. Load does not log itself.
	Warnings []string `yaml:"-"`

	// connProvenix are the connections' effective provenix settings
	// (normalize fills it; see ProvenixFor).
	connProvenix map[string]Provenix
}

// Log configures the runner's own log.
type Log struct {
	// Level is trace, debug, info, warn, error or fatal (forgejo-runner's
	// names; trace maps to debug and fatal to error).
	Level string `yaml:"level"`
	// JobLevel is accepted for compatibility; job logs go to the forge
	// unfiltered.
	JobLevel string `yaml:"job_level"`
}

// Runner configures polling and running tasks.
type Runner struct {
	File            string            `yaml:"file"`
	Capacity        int               `yaml:"capacity"`
	Envs            map[string]string `yaml:"envs"`
	EnvFile         string            `yaml:"env_file"`
	Timeout         time.Duration     `yaml:"timeout"`
	ShutdownTimeout time.Duration     `yaml:"shutdown_timeout"`
	Insecure        bool              `yaml:"insecure"`
	FetchTimeout    time.Duration     `yaml:"fetch_timeout"`
	FetchInterval   time.Duration     `yaml:"fetch_interval"`
	ReportInterval  time.Duration     `yaml:"report_interval"`
	ReportRetry     Retry             `yaml:"report_retry"`
	Labels          []string          `yaml:"labels"`
}

// Retry configures the retries of the final report of a task.
type Retry struct {
	MaxRetries   uint          `yaml:"max_retries"`
	InitialDelay time.Duration `yaml:"initial_delay"`
	MaxDelay     time.Duration `yaml:"max_delay"` // 0: no maximum
}

// Host configures where jobs run.
type Host struct {
	// WorkdirParent is the parent of the jobs' working directories. Empty
	// means <data dir>/runner/work (see Config.WorkdirParent), not
	// forgejo-runner's $HOME/.cache/act: the job user's home is not the
	// runner's, and the data directory is where provenix keeps its state.
	WorkdirParent string `yaml:"workdir_parent"`
}

// Server holds the forge connections of newer forgejo-runner files
// (server.connections), an alternative to a .runner file.
type Server struct {
	Connections map[string]Connection `yaml:"connections"`
}

// Connection is one forge the runner is registered with, in the shape
// forgejo-runner v12 and later write (see connections.go).
type Connection struct {
	URL  string `yaml:"url"`
	UUID string `yaml:"uuid"`
	// Token is the runner's token; TokenURL ("file:/path", where the path
	// may start with $CREDENTIALS_DIRECTORY) names a file holding it
	// instead, so the config need not hold a secret. Exactly one is set.
	Token    string `yaml:"token,omitempty"`
	TokenURL string `yaml:"token_url,omitempty"`
	// Labels default to runner.labels.
	Labels ConnectionLabels `yaml:"labels,omitempty"`
	// FetchInterval defaults to runner.fetch_interval.
	FetchInterval time.Duration `yaml:"fetch_interval,omitempty"`
	// Provenix, when given, is this connection's own provenix: block
	// (tenant, NATS, key, builder id, job users, ...), laid over the
	// top-level one; see tenants.go and Config.ProvenixFor. Not part of
	// forgejo-runner's schema.
	Provenix yaml.Node `yaml:"provenix,omitempty"`
}

// ConnectionLabels are a connection's labels, written either as a list
// ("nix", "nix:host") or as a map from name to options whose backend, if
// given, must be "host".
type ConnectionLabels []string

// UnmarshalYAML accepts both forms.
func (c *ConnectionLabels) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		var ss []string
		if err := n.Decode(&ss); err != nil {
			return err
		}
		*c = ss
		return nil
	case yaml.MappingNode:
		var out []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			var opt struct {
				Backend string    `yaml:"backend"`
				Options yaml.Node `yaml:"backend-options"`
			}
			if err := n.Content[i+1].Decode(&opt); err != nil {
				return fmt.Errorf("label %q: %w", name, err)
			}
			if opt.Backend != "" {
				name += ":" + opt.Backend
			}
			out = append(out, name)
		}
		*c = out
		return nil
	default:
		return fmt.Errorf("line %d: labels must be a list or a map", n.Line)
	}
}

// Provenix configures what only this runner has.
type Provenix struct {
	// NATSURL is the NATS server results are published to; empty means
	// the `provenix up` running on the data directory.
	NATSURL       string `yaml:"nats_url"`
	NATSCreds     string `yaml:"nats_creds"`
	NATSNKey      string `yaml:"nats_nkey"`
	NATSTokenFile string `yaml:"nats_token_file"`
	// NATSCA is a PEM file of CA certificates to trust for a tls:// or
	// wss:// NATS URL signed by a private CA (implies TLS); NATSCert and
	// NATSKey are a client certificate for servers that verify clients.
	NATSCA   string `yaml:"nats_ca"`
	NATSCert string `yaml:"nats_cert"`
	NATSKey  string `yaml:"nats_key"`
	Tenant   string `yaml:"tenant"`
	// Key is the builder signing key; empty means the data directory's.
	Key       string `yaml:"key"`
	BuilderID string `yaml:"builder_id"`
	// JobUser is who job steps run as when the runner runs as root, so a
	// job cannot read the runner's key, token or NATS credentials. All
	// jobs running at once share it.
	JobUser string `yaml:"job_user"`
	// JobUsers is a pool of users, one per running job, so that jobs
	// cannot read each other either (runner.capacity ≤ its size). Entries
	// may hold one numeric range: "provenix-job-{0..3}". Replaces JobUser.
	JobUsers []string `yaml:"job_users"`
	// NoCgroup keeps jobs out of per-job cgroups (Linux, cgroup v2), which
	// are used whenever the runner can create them.
	NoCgroup bool `yaml:"no_cgroup"`
	// NoPrivateTmp keeps jobs on the host's /tmp and /var/tmp (Linux, root:
	// by default each job has its own, in a mount namespace of its own).
	NoPrivateTmp bool `yaml:"no_private_tmp"`
	// JobWindowsDir is where the root runners of a host record when their
	// jobs run, so that a build of one runner's job is not attested as a
	// job's of another (they share the Nix daemon). Empty: the default,
	// runner.DefaultJobWindowsDir, or $PROVENIX_JOB_WINDOWS_DIR when set.
	// Runners that share a daemon must share it.
	JobWindowsDir string `yaml:"job_windows_dir"`
	// Volunteer makes the runner build for the farm (farm.Worker, with
	// this runner's key and builder id) while it runs no job; a job that
	// arrives stops the farm build, which goes back to the farm's queue.
	Volunteer bool `yaml:"volunteer"`
	// Owner is who runs this runner, as the policy counts distinct
	// builders: the farm never gives two replicas of a derivation to one
	// owner. Empty means the builder id.
	Owner string `yaml:"owner"`
	// NixOptions are passed to Nix as --option NAME VALUE for the farm's
	// builds (provenix.volunteer), like 'provenix volunteer --nix-option':
	// e.g. substituters and trusted-public-keys, so that inputs built by
	// others come from the cache. Jobs do not see them.
	NixOptions map[string]string `yaml:"nix_options"`
	// FarmAckWait is the farm's request ack wait, as 'provenix volunteer
	// --ack-wait': how long a request held by a worker that died waits
	// before another takes it. The workers of one farm share a consumer
	// per subject, so they should agree on it. Zero means
	// queue.DefaultAckWait.
	FarmAckWait time.Duration `yaml:"farm_ack_wait"`
}

// Default returns the configuration used when there is no file. It does
// not look at the environment, so it is the same on every machine.
func Default() *Config {
	return &Config{
		Log: Log{Level: "info", JobLevel: "info"},
		Runner: Runner{
			File:            DefaultFile,
			Capacity:        DefaultCapacity,
			Timeout:         DefaultTimeout,
			ShutdownTimeout: DefaultShutdown,
			FetchTimeout:    DefaultFetchTimeout,
			FetchInterval:   DefaultFetchInterval,
			ReportInterval:  DefaultReportInterval,
			ReportRetry:     Retry{MaxRetries: DefaultReportRetries, InitialDelay: DefaultReportDelay},
		},
		Provenix: Provenix{Tenant: DefaultTenant, BuilderID: DefaultBuilderID, JobUser: DefaultJobUser},
	}
}

//go:embed example.yaml
var example []byte

// Example returns a commented configuration file with every key at its
// default, for `provenix runner generate-config`.
func Example() []byte { return bytes.Clone(example) }

// Load reads a configuration file. Keys left out keep their defaults;
// an env_file that exists is read into Runner.Envs (keys in envs win).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("runner config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("runner config %s: %w", path, err)
	}
	if err := c.loadEnvFile(); err != nil {
		return nil, fmt.Errorf("runner config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration document without reading any other file.
func Parse(data []byte) (*Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	for _, s := range []struct {
		name string
		node *yaml.Node
		why  string
	}{
		{"cache", &c.Cache, "there is no actions/cache server; Nix's store and binary cache take its place"},
		{"container", &c.Container, "jobs run natively with Nix, not in Docker containers"},
	} {
		if !isEmpty(s.node) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("section %q is ignored: %s", s.name, s.why))
		}
	}
	if err := c.normalize(); err != nil {
		return nil, err
	}
	return c, nil
}

func isEmpty(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// normalize applies forgejo-runner's rule that a zero or negative value
// means the default (a timeout of 0 would end every job at once), except
// for shutdown_timeout, where 0 means "cancel running jobs at once" there
// too; and checks what cannot be repaired.
func (c *Config) normalize() error {
	d := Default()
	if c.Log.Level == "" {
		c.Log.Level = d.Log.Level
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		return err
	}
	r := &c.Runner
	if r.File == "" {
		r.File = d.Runner.File
	}
	if r.Capacity <= 0 {
		r.Capacity = d.Runner.Capacity
	}
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&r.Timeout, d.Runner.Timeout},
		{&r.FetchTimeout, d.Runner.FetchTimeout},
		{&r.FetchInterval, d.Runner.FetchInterval},
		{&r.ReportInterval, d.Runner.ReportInterval},
		{&r.ReportRetry.InitialDelay, d.Runner.ReportRetry.InitialDelay},
	} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	if r.ReportRetry.MaxRetries == 0 {
		r.ReportRetry.MaxRetries = d.Runner.ReportRetry.MaxRetries
	}
	if r.ShutdownTimeout < 0 {
		return fmt.Errorf("%w: runner.shutdown_timeout %v is negative", ErrConfig, r.ShutdownTimeout)
	}
	if _, err := ParseLabels(r.Labels); err != nil {
		return fmt.Errorf("%w: runner.labels: %w", ErrConfig, err)
	}
	for name, conn := range c.Server.Connections {
		if err := conn.check(); err != nil {
			return fmt.Errorf("%w: server.connections.%s: %w", ErrConfig, name, err)
		}
	}
	if err := c.Provenix.normalize("provenix", r.Capacity); err != nil {
		return err
	}
	return c.resolveTenants()
}

// normalize applies the defaults to one provenix: block (at where, for
// messages) and checks it.
func (p *Provenix) normalize(where string, capacity int) error {
	d := Default()
	if p.Tenant == "" {
		p.Tenant = d.Provenix.Tenant
	}
	if p.BuilderID == "" {
		p.BuilderID = d.Provenix.BuilderID
	}
	if p.JobUser == "" {
		p.JobUser = d.Provenix.JobUser
	}
	users, err := ExpandUsers(p.JobUsers)
	if err != nil {
		return fmt.Errorf("%w: %s.job_users: %w", ErrConfig, where, err)
	}
	p.JobUsers = users
	if len(users) > 0 && capacity > len(users) {
		return fmt.Errorf("%w: runner.capacity %d exceeds the %d users of %s.job_users: each running job needs its own", ErrConfig, capacity, len(users), where)
	}
	if strings.ContainsAny(p.Tenant, ".*> \t") {
		return fmt.Errorf("%w: %s.tenant %q must not contain '.', '*', '>' or spaces (it is a NATS subject token)", ErrConfig, where, p.Tenant)
	}
	return nil
}

// loadEnvFile merges runner.env_file into runner.envs. As in
// forgejo-runner, a missing file is not an error (the example names
// ".env"), but here it is reported in Warnings.
func (c *Config) loadEnvFile() error {
	if c.Runner.EnvFile == "" {
		return nil
	}
	f, err := os.Open(c.Runner.EnvFile)
	if errors.Is(err, os.ErrNotExist) {
		c.Warnings = append(c.Warnings, fmt.Sprintf("runner.env_file %s does not exist; no variables read from it", c.Runner.EnvFile))
		return nil
	}
	if err != nil {
		return fmt.Errorf("runner.env_file: %w", err)
	}
	defer f.Close()
	env, err := ReadEnvFile(f)
	if err != nil {
		return fmt.Errorf("runner.env_file %s: %w", c.Runner.EnvFile, err)
	}
	if c.Runner.Envs == nil {
		c.Runner.Envs = make(map[string]string, len(env))
	}
	for k, v := range env {
		if _, ok := c.Runner.Envs[k]; !ok {
			c.Runner.Envs[k] = v
		}
	}
	return nil
}

// WorkdirParent returns host.workdir_parent as an absolute path, or
// <dataDir>/runner/work when it is empty.
func (c *Config) WorkdirParent(dataDir string) (string, error) {
	p := c.Host.WorkdirParent
	if p == "" {
		p = filepath.Join(dataDir, "runner", "work")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("host.workdir_parent: %w", err)
	}
	return abs, nil
}

// ParseLevel maps forgejo-runner's log level names to slog levels.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "fatal", "panic":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w: log.level %q is not one of trace, debug, info, warn, error, fatal", ErrConfig, s)
}
