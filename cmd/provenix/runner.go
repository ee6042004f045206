package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/runner/rpc"
)

// registerTimeout bounds registering: the forge client retries on its own,
// but an operator waiting at a prompt should get an answer.
const registerTimeout = 2 * time.Minute

func newRunnerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runner",
		Short: "Forgejo Actions runner that runs jobs natively with Nix",
		Long: `A drop-in replacement for forgejo-runner: it registers with a Forgejo (or
Gitea) instance, takes jobs whose runs-on matches its labels, and runs them
natively on this host with Nix instead of in containers. Every derivation a
job builds is attested with the runner's key and published to NATS like
'provenix build' does.

It reads forgejo-runner's config.yaml and .runner files: 'generate-config'
prints a commented config, 'register' or 'create-runner-file' writes the
.runner file, 'daemon' runs jobs.`,
		Example: `  provenix runner generate-config > config.yaml
  provenix runner register --config config.yaml --instance https://forgejo.example.org --token TOKEN
  provenix runner daemon --config config.yaml`,
	}
	cmd.AddCommand(newRunnerRegisterCmd(g), newRunnerCreateFileCmd(g), newRunnerGenerateConfigCmd(g))
	// The commands that run jobs (daemon, one-job, exec-job) are in
	// runner_daemon.go.
	cmd.AddCommand(runnerDaemonCmds(g)...)
	return cmd
}

// registerFlags are the flags of `runner register`.
type registerFlags struct {
	config        string
	instance      string
	token         string
	name          string
	labels        string
	noInteractive bool
	force         bool
	ephemeral     bool
	// forgejoToken is an API access token to fetch the registration
	// token with when token is empty; scope says whose ("", ORG or
	// OWNER/REPO).
	forgejoToken string
	scope        string
	// connection, when set, makes the registration server.connections.NAME
	// of the config file instead of runner.file.
	connection string
}

func newRunnerRegisterCmd(g *globals) *cobra.Command {
	var f registerFlags
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register this runner with a forge and write the .runner file",
		Long: `Register the runner with a Forgejo or Gitea instance using a registration
token from the instance's, organisation's or repository's runner settings
(Settings > Actions > Runners > Create new runner), and write the
registration (the runner's uuid and token) to runner.file of the config,
.runner by default, with mode 0600.

Without --token, an API access token (--forgejo-token, or env
PROVENIX_FORGE_TOKEN, which keeps it out of process lists) fetches the
registration token from the forge's API: the instance's with --scope ""
(the token's user must be a site admin), an organisation's with --scope
ORG, a repository's with --scope OWNER/REPO. Both Forgejo's (GET) and
Gitea's (POST) endpoints are tried.

Missing values are asked for when stdin is a terminal, unless
--no-interactive is given; without a terminal --instance and --token are
required. An existing registration is never replaced without --force (or a
"y" at the prompt): the forge would keep the old runner around.

With --connection NAME the registration goes into the --config file as
server.connections.NAME, forgejo-runner's shape for one runner serving
several forges, instead of runner.file; register once per forge. The rest
of the file (keys, comments) is kept; it is rewritten with mode 0600.

Labels are what runs-on in a workflow matches. They come from the config's
runner.labels if it has any (as in forgejo-runner, --labels is then
ignored), else from --labels, else from the host's Nix: nix, nix-<system>
for the native system and each of extra-platforms, kvm and big-parallel
when they are system-features. A label is NAME or NAME:host; docker:// and
lxc:// labels are refused, as jobs run natively with Nix.`,
		Example: `  provenix runner register --instance https://forgejo.example.org --token TOKEN
  provenix runner register --no-interactive --config config.yaml \
      --instance https://forgejo.example.org --token TOKEN --name ci-1 --labels nix,nix-x86_64-linux,kvm
  PROVENIX_FORGE_TOKEN=$(cat api-token) provenix runner register --no-interactive \
      --instance https://forgejo.example.org --scope org/app --name ci-2 --labels nix`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			interactive := !f.noInteractive && isTerminal(g.stdin)
			return runRegister(cmd.Context(), g, f, interactive)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.config, "config", "c", "", "config `file` (see 'provenix runner generate-config'); its runner.file is where the registration is written; default: built-in defaults")
	fl.StringVar(&f.instance, "instance", "", "`URL` of the Forgejo or Gitea instance, e.g. https://forgejo.example.org")
	fl.StringVar(&f.token, "token", "", "registration `token` from the forge's runner settings")
	fl.StringVar(&f.name, "name", "", "runner `name` shown on the forge (default: this host's name)")
	fl.StringVar(&f.labels, "labels", "", "comma-separated `labels`, e.g. nix,nix-x86_64-linux,kvm (default: derived from the host's Nix; the config's runner.labels win)")
	fl.BoolVar(&f.noInteractive, "no-interactive", false, "never prompt; fail if --instance or --token is missing")
	fl.BoolVar(&f.force, "force", false, "replace an existing registration in runner.file (or the --connection of that name)")
	fl.StringVar(&f.connection, "connection", "", "write the registration into the --config file as server.connections.`NAME` (one runner serving several forges) instead of runner.file; the file keeps its other content and comments")
	fl.BoolVar(&f.ephemeral, "ephemeral", false, "register an ephemeral runner: the forge gives it one job and then removes it")
	fl.StringVar(&f.forgejoToken, "forgejo-token", "", "API access `token` to fetch the registration token with when --token is absent (the forge's Settings > Applications); env "+forgeTokenEnv+" is used when the flag is empty")
	fl.StringVar(&f.scope, "scope", "", "with --forgejo-token: whose runner, `\"\"|ORG|OWNER/REPO`: the instance (site admin token), an organisation, or a repository")
	return cmd
}

// runRegister registers the runner; interactive says whether missing
// values may be asked for on g.stdin.
func runRegister(ctx context.Context, g *globals, f registerFlags, interactive bool) error {
	log := g.logger()
	cfg, err := loadRunnerConfig(f.config, log)
	if err != nil {
		return err
	}
	in := &prompter{r: bufio.NewReader(g.stdin), w: g.stderr, on: interactive}
	if f.connection != "" && f.config == "" {
		return usageError("--connection needs --config: the registration is written into the config file")
	}

	if what := existingRegistration(cfg, f); what != "" {
		switch {
		case f.force:
			log.Warn("replacing the existing registration", "file", cfg.Runner.File)
		case in.on:
			ok, err := in.yes(what + "; replace it?")
			if err != nil {
				return err
			}
			if !ok {
				return usageError("%s: kept", what)
			}
		default:
			return usageError("%s; pass --force to replace it (the forge keeps the old runner until you delete it there)", what)
		}
	}

	if f.token == "" && f.forgejoToken == "" {
		// The environment keeps the access token out of process lists.
		f.forgejoToken = strings.TrimSpace(os.Getenv(forgeTokenEnv))
	}
	if f.scope != "" && (f.forgejoToken == "" || f.token != "") {
		return usageError("--scope goes with --forgejo-token (or env %s) and without --token", forgeTokenEnv)
	}
	if !in.on && (f.instance == "" || (f.token == "" && f.forgejoToken == "")) {
		return usageError("--instance and --token are required, or --forgejo-token / env %s instead of --token (stdin is not a terminal, or --no-interactive was given)", forgeTokenEnv)
	}
	if f.instance == "" {
		if f.instance, err = in.ask("Forge instance URL (e.g. https://forgejo.example.org)", "", validInstance); err != nil {
			return err
		}
	}
	if err := validInstance(f.instance); err != nil {
		return usageError("--instance: %v", err)
	}
	if f.token == "" && f.forgejoToken != "" {
		if f.token, err = fetchRegistrationToken(ctx, cfg, f, log); err != nil {
			return err
		}
	}
	if f.token == "" {
		if f.token, err = in.ask("Registration token (the forge's Settings > Actions > Runners)", "", nonEmpty); err != nil {
			return err
		}
	}
	if f.name == "" {
		f.name, _ = os.Hostname()
		if in.on {
			if f.name, err = in.ask("Runner name", f.name, nonEmpty); err != nil {
				return err
			}
		}
	}
	if f.name == "" {
		return usageError("no runner name: pass --name")
	}
	labels, err := resolveLabels(ctx, cfg, f.labels, in, log)
	if err != nil {
		return err
	}

	rctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	log.Info("registering runner", "instance", f.instance, "name", f.name, "labels", labels)
	rf, err := rpc.Register(rctx, rpc.RegisterOptions{
		Instance:  f.instance,
		Token:     f.token,
		Name:      f.name,
		Labels:    labels,
		Ephemeral: f.ephemeral,
		ClientOptions: []rpc.Option{
			rpc.WithInsecureSkipVerifyUnsafe(cfg.Runner.Insecure),
			rpc.WithVersion(version),
			rpc.WithLogger(log),
		},
	})
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	where := cfg.Runner.File
	if f.connection != "" {
		// Replacing was allowed above (--force or the prompt).
		conn := config.Connection{URL: rf.Address, UUID: rf.UUID, Token: rf.Token, Labels: rf.Labels}
		if err := config.SetConnection(f.config, f.connection, conn, true); err != nil {
			return &exitError{code: exitUsageErr, err: err}
		}
		where = fmt.Sprintf("%s as server.connections.%s", f.config, f.connection)
	} else if err := rf.Save(cfg.Runner.File); err != nil {
		return &exitError{code: exitUsageErr, err: err}
	}
	fmt.Fprintf(g.stdout, "runner %q registered with %s (id %d, uuid %s)\nlabels: %s\nregistration written to %s (mode 0600)\nstart it with: provenix runner daemon%s\n",
		rf.Name, rf.Address, rf.ID, rf.UUID, strings.Join(rf.Labels, ","), where, configArg(f.config))
	return nil
}

// existingRegistration says what registering would replace: the
// connection named by --connection in the config, else runner.file; ""
// when nothing.
func existingRegistration(cfg *config.Config, f registerFlags) string {
	if f.connection != "" {
		if old, ok := cfg.Server.Connections[f.connection]; ok {
			return fmt.Sprintf("%s already has server.connections.%s (uuid %s, %s)", f.config, f.connection, old.UUID, old.URL)
		}
		return ""
	}
	old, err := rpc.LoadRunnerFile(cfg.Runner.File)
	if err == nil {
		return fmt.Sprintf("%s already registers runner %q (uuid %s) with %s", cfg.Runner.File, old.Name, old.UUID, old.Address)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return cfg.Runner.File + " already exists"
	}
	return ""
}

// fetchRegistrationToken asks the forge's API, with the access token, for
// the registration token of the scope.
func fetchRegistrationToken(ctx context.Context, cfg *config.Config, f registerFlags, log *slog.Logger) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	c, err := forgeapi.New(ctx, f.instance, f.forgejoToken,
		forgeapi.WithInsecureSkipVerifyUnsafe(cfg.Runner.Insecure),
		forgeapi.WithUserAgent("provenix/"+version))
	if err != nil {
		return "", forgeError(err)
	}
	scope := f.scope
	if scope == "" {
		scope = "the instance"
	}
	log.Info("fetching a runner registration token", "instance", f.instance, "scope", scope, "forge_version", c.Version())
	tok, err := c.RegistrationToken(ctx, f.scope)
	if err != nil {
		return "", forgeError(err)
	}
	return tok, nil
}

// createFileFlags are the flags of `runner create-runner-file`.
type createFileFlags struct {
	config   string
	instance string
	secret   string
	name     string
	labels   string
	connect  bool
	force    bool
}

func newRunnerCreateFileCmd(g *globals) *cobra.Command {
	var f createFileFlags
	cmd := &cobra.Command{
		Use:   "create-runner-file",
		Short: "Write the .runner file for a runner registered offline with a shared secret",
		Long: `Write the registration of a runner that was registered on the forge ahead of
time with a shared secret, for provisioning without a registration token:

  forgejo forgejo-cli actions register --secret SECRET --name NAME ...   (on the forge)
  provenix runner create-runner-file --instance URL --secret SECRET      (here)

The secret is 40 hexadecimal characters. As Forgejo derives them, the
runner's uuid is made of the first 16 characters of the secret (their
bytes, formatted as a UUID) and its token is the whole secret, so nothing
needs to be asked of the forge. Nothing is sent to the forge unless
--connect is given, which checks before writing the file that the forge
answers and accepts the secret.

Running it again with the same secret and instance rewrites the file (to
change the name or labels); a different registration is only replaced with
--force. Labels are resolved as for 'register'.`,
		Example: `  provenix runner create-runner-file --instance https://forgejo.example.org \
      --secret 7c31591e8b67225a116d4a4519ea8e507e08f71f --name ci-1 --connect`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCreateRunnerFile(cmd.Context(), g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.config, "config", "c", "", "config `file`; its runner.file is where the registration is written; default: built-in defaults")
	fl.StringVar(&f.instance, "instance", "", "`URL` of the Forgejo instance (required)")
	fl.StringVar(&f.secret, "secret", "", "the 40-hex-character `secret` given to 'forgejo forgejo-cli actions register' (required)")
	fl.StringVar(&f.name, "name", "", "runner `name` (default: this host's name)")
	fl.StringVar(&f.labels, "labels", "", "comma-separated `labels` (default: derived from the host's Nix; the config's runner.labels win)")
	fl.BoolVar(&f.connect, "connect", false, "before writing the file, check that the forge answers (Ping) and accepts the secret (Declare)")
	fl.BoolVar(&f.force, "force", false, "replace a different registration in runner.file")
	_ = cmd.MarkFlagRequired("instance")
	_ = cmd.MarkFlagRequired("secret")
	return cmd
}

func runCreateRunnerFile(ctx context.Context, g *globals, f createFileFlags) error {
	log := g.logger()
	cfg, err := loadRunnerConfig(f.config, log)
	if err != nil {
		return err
	}
	if f.name == "" {
		f.name, _ = os.Hostname()
	}
	labels, err := resolveLabels(ctx, cfg, f.labels, &prompter{}, log)
	if err != nil {
		return err
	}
	rf, err := rpc.CreateRunnerFile(f.instance, f.secret, f.name, labels)
	if err != nil {
		return usageError("%v", err)
	}
	if old, err := rpc.LoadRunnerFile(cfg.Runner.File); err == nil {
		if !rf.SameRegistration(old) && !f.force {
			return usageError("%s already registers runner %q (uuid %s) with %s; pass --force to replace it", cfg.Runner.File, old.Name, old.UUID, old.Address)
		}
		rf.ID = old.ID // the forge's id, if a registration learnt it
	} else if !errors.Is(err, os.ErrNotExist) && !f.force {
		return usageError("%v; pass --force to replace it", err)
	}
	if f.connect {
		if err := checkRunnerFile(ctx, cfg, rf, log); err != nil {
			return &exitError{code: exitFailed, err: err}
		}
	}
	if err := rf.Save(cfg.Runner.File); err != nil {
		return &exitError{code: exitUsageErr, err: err}
	}
	fmt.Fprintf(g.stdout, "runner %q (uuid %s) for %s written to %s (mode 0600)\n", rf.Name, rf.UUID, rf.Address, cfg.Runner.File)
	return nil
}

// checkRunnerFile checks with the forge that it knows the file's
// registration (forge.CheckRegistration).
func checkRunnerFile(ctx context.Context, cfg *config.Config, rf *rpc.RunnerFile, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	r, err := rpc.CheckRegistration(ctx, rf, version,
		rpc.WithInsecureSkipVerifyUnsafe(cfg.Runner.Insecure),
		rpc.WithLogger(log))
	switch {
	case err != nil:
		return err
	case r == nil:
		log.Warn("the forge is too old to check the secret (Declare is unimplemented before Forgejo 1.21)")
	default:
		log.Info("the forge accepts the secret", "runner", r.GetName(), "labels", r.GetLabels())
	}
	return nil
}

func newRunnerGenerateConfigCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "generate-config",
		Short: "Print a commented runner config with every default",
		Long: `Print a runner configuration file with every key at its default and a
comment saying what it does. It loads as is; edit what you need.`,
		Example: `  provenix runner generate-config > config.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := g.stdout.Write(config.Example())
			return err
		},
	}
}

// loadRunnerConfig loads the config file, or the defaults without one,
// and logs what the file had that is ignored.
func loadRunnerConfig(path string, log *slog.Logger) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, usageError("%v", err)
	}
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	return cfg, nil
}

// resolveLabels picks the labels to register with
// (config.RegistrationLabels); labels derived from the host's Nix are
// offered for editing at a prompt.
func resolveLabels(ctx context.Context, cfg *config.Config, flag string, in *prompter, log *slog.Logger) ([]string, error) {
	labels, src, err := cfg.RegistrationLabels(flag, func() (map[string]string, error) { return (&nix.Nix{}).Config(ctx) })
	if err != nil {
		return nil, usageError("%v", err)
	}
	if src == config.LabelsFromConfig && flag != "" {
		log.Warn("--labels is ignored: the config's runner.labels are used", "labels", labels)
	}
	if src == config.LabelsFromNix && in.on {
		s, err := in.ask("Labels, comma-separated", strings.Join(labels, ","), func(s string) error {
			return config.CheckRegistrationLabels(config.SplitLabels(s))
		})
		if err != nil {
			return nil, err
		}
		labels = config.SplitLabels(s)
	}
	return labels, nil
}

func configArg(path string) string {
	if path == "" {
		return ""
	}
	return " --config " + path
}

func validInstance(s string) error {
	_, err := rpc.New(s)
	return err
}

func nonEmpty(s string) error {
	if s == "" {
		return errors.New("a value is required")
	}
	return nil
}

// isTerminal reports whether r is a terminal a person can answer at.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// prompter asks for missing values when on; when off, asking is a usage
// error naming what is missing.
type prompter struct {
	r  *bufio.Reader
	w  io.Writer
	on bool
}

// ask prompts until check accepts the answer; an empty answer takes def.
func (p *prompter) ask(question, def string, check func(string) error) (string, error) {
	if !p.on {
		return "", usageError("%s: cannot ask (stdin is not a terminal, or --no-interactive was given)", question)
	}
	for {
		if def != "" {
			fmt.Fprintf(p.w, "%s [%s]: ", question, def)
		} else {
			fmt.Fprintf(p.w, "%s: ", question)
		}
		line, err := p.r.ReadString('\n')
		if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
			return "", usageError("%s: no answer (%v)", question, err)
		}
		ans := strings.TrimSpace(line)
		if ans == "" {
			ans = def
		}
		cerr := check(ans)
		if cerr == nil {
			return ans, nil
		}
		fmt.Fprintf(p.w, "  %v\n", cerr)
		if err != nil { // EOF: no second chance
			return "", usageError("%s: %v", question, cerr)
		}
	}
}

// yes asks a yes/no question; the default is no.
func (p *prompter) yes(question string) (bool, error) {
	ans, err := p.ask(question+" (y/N)", "n", func(s string) error {
		switch strings.ToLower(s) {
		case "y", "yes", "n", "no":
			return nil
		}
		return errors.New("answer y or n")
	})
	if err != nil {
		return false, err
	}
	return strings.HasPrefix(strings.ToLower(ans), "y"), nil
}
