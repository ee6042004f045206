package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, shared by every command.
const (
	exitOK       = 0
	exitFailed   = 1 // the command ran and the answer is no (not verified, build failed)
	exitUsageErr = 2 // bad usage or an I/O error
)

// exitError carries an exit code out of a command, and for a usage error
// the hint printed after it.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{code: exitUsageErr, err: fmt.Errorf(format, args...)}
}

// globals are the flags every command has.
type globals struct {
	dataDir  string
	logLevel string
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

func (g *globals) paths() up.Paths { return up.Paths{Dir: g.dataDir} }

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl}))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	// Find fails for an unknown command, and for the commands cobra adds
	// only when it executes (help, completion), which then succeed.
	c, _, findErr := root.Find(args)
	// A command taking Nix arguments takes them as Nix does too: --arg
	// NAME EXPR, two tokens (cobra would read one).
	if findErr == nil && c.Flags().Lookup("arg") != nil {
		joined, err := nix.JoinArgs(args, "arg", "argstr")
		if err != nil {
			fmt.Fprintln(stderr, "provenix:", err)
			return exitUsageErr
		}
		args = joined
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "provenix:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.hint != "" {
			fmt.Fprintln(stderr, ee.hint)
		}
		return ee.code
	}
	if findErr != nil { // the unknown command
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", root.CommandPath())
	}
	return exitUsageErr
}

// commandLineError is a usage error in how c was called (flags or
// arguments), with the hint to read c's help.
func commandLineError(c *cobra.Command, err error) error {
	return &exitError{code: exitUsageErr, err: err, hint: fmt.Sprintf("Run '%s --help' for usage.", c.CommandPath())}
}

// markCommandLineErrors makes cobra's own errors about a command line
// usage errors with a hint: a flag that does not parse (FlagErrorFunc,
// inherited by every subcommand), a required flag missing (cobra checks
// those after the pre-run hook, so the hook checks first), and wrong
// arguments (each command's Args validator).
func markCommandLineErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(commandLineError)
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if err := c.ValidateRequiredFlags(); err != nil {
			return commandLineError(c, err)
		}
		if err := c.ValidateFlagGroups(); err != nil {
			return commandLineError(c, err)
		}
		return nil
	}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			c.Args = func(c *cobra.Command, args []string) error {
				if err := check(c, args); err != nil {
					return commandLineError(c, err)
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "provenix",
		Short: "Trustworthy build and distribution pipeline for Nix",
		Long: `Provenix builds Nix derivations, attests every output with signed SLSA v1
provenance (a Sigstore bundle), publishes results over NATS JetStream, and
lets cache pushers publish only what their policy accepts into a Nix binary
cache that stock nix substitutes from. 'provenix verify' checks the result.

Quick start (one machine, embedded defaults):
  provenix up &                  # embedded NATS + cache pusher + cache server
  provenix build ./examples/hello.nix -A hello --arg busybox /usr/bin/busybox
  provenix verify --cache http://127.0.0.1:8080 /nix/store/...-provenix-hello
Or run everything at once: provenix demo`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", up.DefaultDataDir(), "data directory: keys, policy, NATS store and cache (env PROVENIX_DATA_DIR)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newKeyCmd(g), newBuildCmd(g), newVerifyCmd(g), newUpCmd(g), newDemoCmd(g), newCachePushCmd(g), newCacheCmd(g), newRunnerCmd(g), newBuildersCmd(g), newStatusCmd(g), newDiffCmd(g), newVolunteerCmd(g))
	root.AddCommand(newActionCmd(g))
	root.AddCommand(newFeedbackCmd(g))
	root.AddCommand(newTenantCmd(g))
	root.AddCommand(newSubmitCmd(g), newFarmCmd(g))
	root.AddCommand(newUsageCmd(g))
	root.AddCommand(newOCICmd(g))
	markCommandLineErrors(root)
	return root
}

// natsFlags select and authenticate a NATS server.
type natsFlags struct {
	url   string
	creds string
	nkey  string
	token string
	// ca is a PEM file of CA certificates trusted for tls:// and wss://
	// servers, besides the system's; cert and key a client certificate.
	ca   string
	cert string
	key  string
}

func (f *natsFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.url, "nats-url", os.Getenv("PROVENIX_NATS_URL"), "NATS server URL: nats://, tls://, or wss:// through firewalls (env PROVENIX_NATS_URL); default: the running 'provenix up' of --data-dir")
	cmd.Flags().StringVar(&f.creds, "nats-creds", "", "NATS credentials file")
	cmd.Flags().StringVar(&f.nkey, "nats-nkey", "", "NATS NKey seed file, e.g. a tenant's runner.nk or pusher.nk from 'provenix tenant add'")
	cmd.Flags().StringVar(&f.token, "nats-token-file", "", "file holding a NATS token")
	cmd.Flags().StringVar(&f.ca, "nats-ca", "", "PEM file of the CA (or self-signed certificate) to trust for tls:// and wss:// NATS servers (implies TLS; a tls:// URL does too)")
	cmd.Flags().StringVar(&f.cert, "nats-cert", "", "PEM client certificate for NATS servers that verify clients (with --nats-key)")
	cmd.Flags().StringVar(&f.key, "nats-key", "", "PEM key of --nats-cert")
}

// stoppedStarting is a service's start-up error err, or nil when a stop
// signal (ctx done) cut the start-up short: a service stopped while it
// starts has not failed, and its service manager must not be told so.
// Only an error the stop caused (the context's) counts: one of another
// cause at the same moment (a usage error) is returned.
func stoppedStarting(ctx context.Context, g *globals, err error) error {
	if err != nil && ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.Cause(ctx))) {
		g.logger().Warn("stopped while starting", "err", err)
		return nil
	}
	return err
}

// connect opens the NATS connection: the given URL, or the one of the
// `provenix up` running on the data directory.
func (f *natsFlags) connect(ctx context.Context, g *globals, name string) (*queue.Conn, error) {
	url := f.url
	defaultToken := ""
	if url == "" {
		rt, err := up.ReadRuntime(g.paths())
		if err != nil {
			return nil, usageError("no NATS server to publish to: %v\nStart one with 'provenix up --data-dir %s', or pass --nats-url", err, g.dataDir)
		}
		url = rt.NATSURL
		defaultToken = g.paths().NATSToken()
	}
	opts, err := f.options(defaultToken)
	if err != nil {
		return nil, err
	}
	opts = append(opts, queue.WithName(name), queue.WithLogger(g.logger()))
	// Connect retries until its context ends; a wrong URL must not hang.
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := queue.Connect(cctx, url, opts...)
	if errors.Is(err, queue.ErrUntrustedCert) {
		err = fmt.Errorf("%w\nA server certificate from a private CA (or self-signed) needs --nats-ca <its CA's PEM file> (runner config: nats_ca)", err)
	}
	if err != nil {
		return nil, &exitError{code: exitUsageErr, err: err}
	}
	return c, nil
}

// options are the connection options the flags give: the credentials (see
// authOptions) and TLS (--nats-ca, --nats-cert with --nats-key).
func (f *natsFlags) options(defaultTokenFile string) ([]queue.Option, error) {
	if (f.cert == "") != (f.key == "") {
		return nil, usageError("--nats-cert and --nats-key go together")
	}
	opts, err := f.authOptions(defaultTokenFile)
	if err != nil {
		return nil, err
	}
	if f.ca != "" {
		opts = append(opts, queue.WithRootCA(f.ca))
	}
	if f.cert != "" {
		opts = append(opts, queue.WithClientCert(f.cert, f.key))
	}
	return opts, nil
}

// authOptions are the connection's credentials: --nats-creds, --nats-nkey
// or --nats-token-file (one of them), else the token in defaultTokenFile
// when that is set.
func (f *natsFlags) authOptions(defaultTokenFile string) ([]queue.Option, error) {
	set := 0
	for _, v := range []string{f.creds, f.nkey, f.token} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return nil, usageError("--nats-creds, --nats-nkey and --nats-token-file exclude each other")
	}
	switch {
	case f.creds != "":
		return []queue.Option{queue.WithCredsFile(f.creds)}, nil
	case f.nkey != "":
		return []queue.Option{queue.WithNKeySeedFile(f.nkey)}, nil
	}
	tokenFile := f.token
	if tokenFile == "" {
		tokenFile = defaultTokenFile
	}
	if tokenFile == "" {
		return nil, nil
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, &exitError{code: exitUsageErr, err: fmt.Errorf("nats token: %w", err)}
	}
	return []queue.Option{queue.WithToken(strings.TrimSpace(string(tok)))}, nil
}
