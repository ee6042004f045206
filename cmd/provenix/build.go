package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/capture"
	"codeberg.org/provenix/provenix/up"
)

// builderFlags are who builds and where, shared by build and volunteer.
type builderFlags struct {
	nats       natsFlags
	key        string
	nixKey     string
	builderID  string
	tenant     string
	nixOptions []string
	storeRoot  string
}

func (f *builderFlags) register(cmd *cobra.Command, tenantHelp string) {
	fl := cmd.Flags()
	f.nats.register(cmd)
	fl.StringVar(&f.key, "key", "", "builder signing key (default: the data directory's keys/builder.key)")
	fl.StringVar(&f.nixKey, "nix-key", "", "also sign each output's narinfo fingerprint with this Nix secret key (NAME:base64, e.g. from 'provenix key generate --cache NAME FILE'); policies list the public half as the builder's nix_key")
	fl.StringVar(&f.builderID, "builder-id", up.DefaultBuilderID, "builder id recorded in the provenance; policies bind it to the key")
	fl.StringVar(&f.tenant, "tenant", up.DefaultTenant, tenantHelp)
	fl.StringArrayVar(&f.nixOptions, "nix-option", nil, "NAME=VALUE passed to Nix as --option NAME VALUE")
	fl.StringVar(&f.storeRoot, "store", "", "build in a chroot store rooted at this directory (nix --store)")
}

// nix is the Nix the flags describe.
func (f *builderFlags) nix(g *globals) (*nix.Nix, error) {
	opts, err := builder.ParsePairs("nix-option", f.nixOptions)
	if err != nil {
		return nil, targetError(err)
	}
	return &nix.Nix{Root: f.storeRoot, Options: opts, Stderr: g.stderr}, nil
}

// keys loads the signing key (default: the data directory's) and the
// optional Nix key.
func (f *builderFlags) keys(g *globals) (*attest.Signer, *signature.SecretKey, error) {
	keyPath := f.key
	if keyPath == "" {
		keyPath = g.paths().BuilderKey()
	}
	signer, err := attest.LoadSigner(keyPath)
	if err != nil {
		return nil, nil, &exitError{code: exitUsageErr, err: fmt.Errorf("%w\nCreate one with 'provenix key generate --builder FILE' or start 'provenix up' once", err)}
	}
	if f.nixKey == "" {
		return signer, nil, nil
	}
	k, err := cachepush.LoadKey(f.nixKey)
	if err != nil {
		return nil, nil, &exitError{code: exitUsageErr, err: fmt.Errorf("--nix-key: %w", err)}
	}
	return signer, &k, nil
}

type buildFlags struct {
	builderFlags
	json       bool
	attr       string
	args       []string
	argstrs    []string
	rekorURL   string
	sourceRepo string
	sourceRev  string
	noClosure  bool
}

func newBuildCmd(g *globals) *cobra.Command {
	f := &buildFlags{}
	cmd := &cobra.Command{
		Use:   "build [flags] TARGET...",
		Short: "Build with Nix, attest every output and publish the results",
		Long: `Realise each TARGET with the host's Nix, stream every output's NAR through
sha256 into staging, describe the build in an SLSA v1 provenance Statement,
sign it with the builder key and publish one result per derivation: the
target's, and one for every derivation of its runtime closure that this
store built (not substituted), dependencies first. Content-addressed sources
of the closure (builtins.path, builtins.toFile) travel with the first result
that needs them.

TARGET is one of:
  FILE.nix (or a directory with default.nix), with -A ATTR
  /nix/store/...drv                     a derivation path
  FLAKEREF#ATTR                         a flake installable (Nix with flakes)

By default it publishes to the 'provenix up' running on --data-dir, with that
data directory's builder key and builder id "local".`,
		Example: `  provenix build ./examples/hello.nix -A hello --arg busybox /usr/bin/busybox
  provenix build --json /nix/store/...-hello.drv
  provenix build --nats-url nats://nats.example:4222 --key builder.key --builder-id ci-1 .#hello`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuild(cmd.Context(), g, f, args)
		},
	}
	fl := cmd.Flags()
	f.builderFlags.register(cmd, "tenant the results belong to")
	fl.BoolVar(&f.json, "json", false, "print results as JSON")
	fl.StringVarP(&f.attr, "attr", "A", "", "attribute to build from a .nix file")
	fl.StringArrayVar(&f.args, "arg", nil, "NAME EXPR (as Nix takes it) or NAME=EXPR, passed as --arg NAME EXPR to file targets")
	fl.StringArrayVar(&f.argstrs, "argstr", nil, "NAME VALUE (as Nix takes it) or NAME=VALUE, passed as --argstr to file targets")
	fl.StringVar(&f.rekorURL, "rekor-url", "", "also log each bundle in this Rekor v2 transparency log (verifiers can then require it: verify --require-tlog)")
	fl.BoolVar(&f.noClosure, "no-closure", false, "do not stage the derivation's closure export (its .drv files and sources), which volunteers import to rebuild it and pushers need to check output paths (they reject results without it)")
	fl.StringVar(&f.sourceRepo, "source-repo", "", "source repository URL to record (default: the target's git origin)")
	fl.StringVar(&f.sourceRev, "source-rev", "", "source revision to record (default: the target's git HEAD)")
	return cmd
}

// targetError gives builder's target and NAME=VALUE errors the usage exit
// code.
func targetError(err error) error {
	if errors.Is(err, builder.ErrTarget) {
		return &exitError{code: exitUsageErr, err: err}
	}
	return err
}

// jsonPublished is the --json form of one published result.
type jsonPublished struct {
	DrvPath string `json:"drvPath"`
	System  string `json:"system"`
	// Requested: a derivation of the targets; the others are their
	// closure, built here.
	Requested    bool         `json:"requested"`
	Outputs      []jsonOutput `json:"outputs"`
	Sources      []string     `json:"sources,omitempty"`
	MsgID        string       `json:"msgId"`
	Duplicate    bool         `json:"duplicate"`
	BuildSeconds float64      `json:"buildSeconds"`
	PubSeconds   float64      `json:"publishSeconds"`
}

type jsonOutput struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	NarSHA256 string `json:"narSha256"`
	NarSize   uint64 `json:"narSize"`
}

func runBuild(ctx context.Context, g *globals, f *buildFlags, targets []string) error {
	if err := nix.Available(); err != nil {
		return &exitError{code: exitUsageErr, err: err}
	}
	args, err := builder.ParsePairs("arg", f.args)
	if err != nil {
		return targetError(err)
	}
	argstrs, err := builder.ParsePairs("argstr", f.argstrs)
	if err != nil {
		return targetError(err)
	}
	nx, err := f.nix(g)
	if err != nil {
		return err
	}
	to := builder.TargetOptions{Attr: f.attr, Args: args, ArgStrs: argstrs, DetectGitSource: true}
	if f.sourceRepo != "" || f.sourceRev != "" {
		to.Source = &attest.Source{Repository: f.sourceRepo, Revision: f.sourceRev}
	}
	tgts, err := builder.ParseTargets(ctx, targets, to)
	if err != nil {
		return targetError(err)
	}
	// Inside a Provenix runner job the runner signs: this step realises its
	// targets as the job user and hands the derivations over its socket.
	if rc := capture.FromEnv(); rc != nil && f.key == "" && f.nats.url == "" {
		return runBuildViaRunner(ctx, g, f, rc, tgts, nx)
	}
	signer, nixKey, err := f.keys(g)
	if err != nil {
		return err
	}
	conn, err := f.nats.connect(ctx, g, "provenix-build")
	if err != nil {
		return err
	}
	defer conn.Close()

	b := &builder.Builder{
		NixKey:    nixKey,
		RekorURL:  f.rekorURL,
		Nix:       nx,
		Queue:     conn,
		Signer:    signer,
		BuilderID: f.builderID,
		Tenant:    f.tenant,
		Version:   version,
		Logger:    g.logger(),
		// Volunteers rebuild from the staged closure (provenix volunteer).
		StageClosures: !f.noClosure,
	}
	var all []jsonPublished
	err = b.BuildTargets(ctx, tgts, func(p builder.Published) error {
		jp := jsonPublished{DrvPath: p.DrvPath, System: p.System, Requested: p.Requested, Sources: p.Sources,
			MsgID: p.MsgID, Duplicate: p.Duplicate, BuildSeconds: p.Built.Seconds(), PubSeconds: p.Publish.Seconds()}
		for _, o := range p.Outputs {
			jp.Outputs = append(jp.Outputs, jsonOutput{Name: o.Name, Path: o.Path, NarSHA256: o.NarHashHex(), NarSize: o.NarSize})
		}
		all = append(all, jp)
		if !f.json {
			printPublished(g, jp, signer.KeyID(), f.builderID)
		}
		return nil
	})
	if err != nil {
		if f.json {
			writeJSON(g, all)
		}
		return &exitError{code: exitFailed, err: err}
	}
	if f.json {
		return writeJSON(g, all)
	}
	return nil
}

func printPublished(g *globals, p jsonPublished, keyID, builderID string) {
	if p.Requested {
		fmt.Fprintf(g.stdout, "built %s (%s) in %.2fs\n", p.DrvPath, p.System, p.BuildSeconds)
	} else {
		fmt.Fprintf(g.stdout, "built %s (%s) in its closure\n", p.DrvPath, p.System)
	}
	for _, o := range p.Outputs {
		fmt.Fprintf(g.stdout, "  %-4s %s\n       NAR sha256 %s, %d bytes\n", o.Name, o.Path, o.NarSHA256, o.NarSize)
	}
	for _, s := range p.Sources {
		fmt.Fprintf(g.stdout, "  source %s\n", s)
	}
	state := "published"
	if p.Duplicate {
		state = "already published (duplicate)"
	}
	fmt.Fprintf(g.stdout, "  %s result %.12s, signed by builder %q (key %s), in %.3fs\n", state, p.MsgID, builderID, keyID, p.PubSeconds)
}

func writeJSON(g *globals, v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// runBuildViaRunner is `provenix build` inside a runner job: it never sees
// a key (builder.BuildViaRunner).
func runBuildViaRunner(ctx context.Context, g *globals, f *buildFlags, rc *capture.Client, tgts []builder.Target, nx *nix.Nix) error {
	var all []jsonPublished
	err := builder.BuildViaRunner(ctx, nx, rc, tgts, builder.ViaRunnerOptions{
		Realising: func(drv string) { fmt.Fprintf(g.stderr, "realising %s\n", drv) },
		Attested: func(rb builder.RunnerBuild) {
			for _, r := range rb.Results {
				jp := jsonPublished{DrvPath: r.DrvPath, System: r.System, Requested: r.DrvPath == rb.DrvPath, MsgID: r.MsgID, Duplicate: r.Duplicate}
				if jp.Requested {
					jp.BuildSeconds = rb.Built.Seconds()
				}
				for _, o := range r.Outputs {
					jp.Outputs = append(jp.Outputs, jsonOutput{Name: o.Name, Path: o.Path, NarSHA256: o.NarSHA256, NarSize: o.NarSize})
				}
				all = append(all, jp)
				if !f.json {
					printPublished(g, jp, "held by the runner", r.BuilderID)
				}
			}
		},
	})
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	if f.json {
		return writeJSON(g, all)
	}
	return nil
}
