package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/forgeapi"
)

// forgeTokenEnv holds the forge access token when no --token-file is given.
const forgeTokenEnv = "PROVENIX_FORGE_TOKEN"

// forgeFlags select a forge, a repository and an access token. The token is
// read from a file or the environment, never from a flag value, so it does
// not show in process lists.
type forgeFlags struct {
	server    string
	tokenFile string
	repo      string
}

func (f *forgeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", os.Getenv("GITHUB_SERVER_URL"), "`URL` of the Forgejo or Gitea instance (default: env GITHUB_SERVER_URL, set in Actions jobs)")
	fl.StringVar(&f.tokenFile, "token-file", "", "`file` holding the API access token (default: env "+forgeTokenEnv+")")
	fl.StringVar(&f.repo, "repo", os.Getenv("GITHUB_REPOSITORY"), "repository as `owner/repo` (default: env GITHUB_REPOSITORY)")
}

// client reads the token and connects; it also splits --repo.
func (f *forgeFlags) client(ctx context.Context) (c *forgeapi.Client, owner, repo string, err error) {
	if f.server == "" {
		return nil, "", "", usageError("--server is required (or env GITHUB_SERVER_URL)")
	}
	owner, repo, err = forgeapi.SplitRepo(f.repo)
	if err != nil {
		return nil, "", "", usageError("--repo %q: want owner/repo", f.repo)
	}
	tok, err := readForgeToken(f.tokenFile)
	if err != nil {
		return nil, "", "", err
	}
	c, err = forgeapi.New(ctx, f.server, tok, forgeapi.WithUserAgent("provenix/"+version))
	if err != nil {
		return nil, "", "", forgeError(err)
	}
	return c, owner, repo, nil
}

// readForgeToken reads the access token from file, else from the
// environment.
func readForgeToken(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usageError("--token-file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", usageError("--token-file %s is empty", file)
		}
		return tok, nil
	}
	if tok := strings.TrimSpace(os.Getenv(forgeTokenEnv)); tok != "" {
		return tok, nil
	}
	return "", usageError("no forge access token: pass --token-file FILE or set %s", forgeTokenEnv)
}

// forgeError gives a feedback error its exit code: bad arguments are usage
// errors, the forge saying no is a failure.
func forgeError(err error) error {
	if errors.Is(err, forgeapi.ErrInvalid) {
		return &exitError{code: exitUsageErr, err: err}
	}
	return &exitError{code: exitFailed, err: err}
}

func newFeedbackCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "feedback",
		Short: "Report results back to the forge: commit statuses, release assets",
		Long: `Report what Provenix found back to a Forgejo or Gitea instance through its
API: a commit status per system, and Sigstore bundles as assets of a release.

The access token is read from --token-file or env ` + forgeTokenEnv + `,
never from a flag value. In an Actions job, --server and --repo default to
GITHUB_SERVER_URL and GITHUB_REPOSITORY, and status's --sha to GITHUB_SHA.`,
	}
	cmd.AddCommand(newFeedbackStatusCmd(g), newFeedbackAssetsCmd(g))
	return cmd
}

type feedbackStatusFlags struct {
	forge       forgeFlags
	sha         string
	system      string
	state       string
	description string
	targetURL   string
}

func newFeedbackStatusCmd(g *globals) *cobra.Command {
	var f feedbackStatusFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Set the provenix/<system> commit status of a commit",
		Long: `Set a commit status with context provenix/<system>: pending while building,
success once the quorum verified, failure when disputed, error when the
pipeline broke. A later status of the same system replaces the earlier one
in the forge's view. The description is cut to ` + fmt.Sprint(forgeapi.MaxDescription) + ` characters.`,
		Example: `  provenix feedback status --server https://forgejo.example.org --token-file ~/.forge-token \
      --repo org/app --sha 3f2a... --system x86_64-linux --state success \
      --description "quorum 2/2 verified" --target-url https://cache.example.org/abc.provenance.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFeedbackStatus(cmd.Context(), g, f)
		},
	}
	f.forge.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.sha, "sha", os.Getenv("GITHUB_SHA"), "`commit` to set the status on (default: env GITHUB_SHA)")
	fl.StringVar(&f.system, "system", "", "Nix `system` the status is about, e.g. x86_64-linux (the context is provenix/<system>)")
	fl.StringVar(&f.state, "state", "", "`state`: pending, success, failure or error")
	fl.StringVar(&f.description, "description", "", "short `text`, e.g. \"quorum 2/2 verified\" or \"disputed: 2 NARs\"")
	fl.StringVar(&f.targetURL, "target-url", "", "`URL` the status links to: the provenance sidecar or the cache")
	_ = cmd.MarkFlagRequired("system")
	_ = cmd.MarkFlagRequired("state")
	return cmd
}

func runFeedbackStatus(ctx context.Context, g *globals, f feedbackStatusFlags) error {
	state, err := forgeapi.ParseState(f.state)
	if err != nil {
		return usageError("--state: %v", err)
	}
	if f.sha == "" {
		return usageError("--sha is required (or env GITHUB_SHA)")
	}
	c, owner, repo, err := f.forge.client(ctx)
	if err != nil {
		return err
	}
	st := forgeapi.Status{System: f.system, State: state, Description: f.description, TargetURL: f.targetURL}
	if err := c.SetStatus(ctx, owner, repo, f.sha, st); err != nil {
		return forgeError(err)
	}
	fmt.Fprintf(g.stdout, "%s/%s@%s: %s = %s\n", owner, repo, f.sha, st.Context(), state)
	return nil
}

type feedbackAssetsFlags struct {
	forge forgeFlags
	tag   string
}

func newFeedbackAssetsCmd(g *globals) *cobra.Command {
	var f feedbackAssetsFlags
	cmd := &cobra.Command{
		Use:   "release-assets FILE...",
		Short: "Attach files (Sigstore bundles) to the release of a tag",
		Long: `Attach each FILE, under its base name, as an asset of the release of --tag.
An asset already there with the same name and size is skipped, so running
it again is harmless; one with the same name and another size is an error
and is never replaced. The release must exist: a bare tag is not enough.`,
		Example: `  provenix feedback release-assets --server https://forgejo.example.org --token-file ~/.forge-token \
      --repo org/app --tag v1.2.0 result/*.sigstore.json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFeedbackAssets(cmd.Context(), g, f, args)
		},
	}
	f.forge.register(cmd)
	cmd.Flags().StringVar(&f.tag, "tag", "", "`tag` whose release gets the files")
	_ = cmd.MarkFlagRequired("tag")
	return cmd
}

func runFeedbackAssets(ctx context.Context, g *globals, f feedbackAssetsFlags, files []string) error {
	c, owner, repo, err := f.forge.client(ctx)
	if err != nil {
		return err
	}
	assets, err := c.AttachBundles(ctx, owner, repo, f.tag, files)
	for _, a := range assets {
		what := "attached"
		if !a.Uploaded {
			what = "already there"
		}
		fmt.Fprintf(g.stdout, "%s (%d bytes): %s %s\n", a.Name, a.Size, what, a.DownloadURL)
	}
	if err != nil {
		return forgeError(err)
	}
	return nil
}
