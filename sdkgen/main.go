// Command sdkgen generates lockstep's TypeScript and Go SDKs from schema.json with Pulumi's own
// codegen library (the code behind `pulumi package gen-sdk`, which needs the Node and Go language
// hosts that cannot be had here). Same pkg/v3 as the CLI (scripts/engine/pulumi/go.mod), so Go's
// build cache is shared.
//
//	sdkgen gen SCHEMA OUTDIR   writes OUTDIR/nodejs and OUTDIR/go
//	sdkgen canonical SCHEMA    prints the schema as Pulumi reads it (a PackageSpec round trip),
//	                           for comparing a plugin's GetSchema answer with the checked-in file
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/blang/semver"
	gogen "github.com/pulumi/pulumi/pkg/v3/codegen/go"
	"github.com/pulumi/pulumi/pkg/v3/codegen/nodejs"
	"github.com/pulumi/pulumi/pkg/v3/codegen/schema"
)

const tool = "lockstep-sdkgen"

// noLoader: lockstep's schema references no other package, so nothing is ever loaded.
type noLoader struct{}

var errNoDeps = errors.New("lockstep's schema references no other package")

func (noLoader) LoadPackage(string, *semver.Version) (*schema.Package, error) { return nil, errNoDeps }
func (noLoader) LoadPackageV2(context.Context, *schema.PackageDescriptor) (*schema.Package, error) {
	return nil, errNoDeps
}

func (noLoader) LoadPackageReference(string, *semver.Version) (schema.PackageReference, error) {
	return nil, errNoDeps
}

func (noLoader) LoadPackageReferenceV2(context.Context, *schema.PackageDescriptor) (schema.PackageReference, error) {
	return nil, errNoDeps
}

func readSpec(path string) (schema.PackageSpec, error) {
	var spec schema.PackageSpec
	data, err := os.ReadFile(path)
	if err != nil {
		return spec, err
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return spec, fmt.Errorf("%s is not a Pulumi package schema: %w", path, err)
	}
	return spec, nil
}

// bind validates the schema against Pulumi's metaschema and binds it, as gen-sdk does.
func bind(path string) (*schema.Package, error) {
	spec, err := readSpec(path)
	if err != nil {
		return nil, err
	}
	pkg, diags, err := schema.BindSpec(spec, noLoader{}, schema.ValidationOptions{})
	if err != nil {
		return nil, err
	}
	if diags.HasErrors() {
		return nil, fmt.Errorf("%s does not bind: %s", path, diags.Error())
	}
	return pkg, nil
}

func write(dir string, files map[string][]byte) error {
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func gen(schemaPath, out string) error {
	// Each generator records its language info on the package, so each gets a fresh bind.
	pkg, err := bind(schemaPath)
	if err != nil {
		return err
	}
	ts, err := nodejs.GeneratePackage(tool, pkg, nil, nil, false, noLoader{})
	if err != nil {
		return fmt.Errorf("TypeScript codegen: %w", err)
	}
	if err := write(filepath.Join(out, "nodejs"), ts); err != nil {
		return err
	}
	if pkg, err = bind(schemaPath); err != nil {
		return err
	}
	goFiles, err := gogen.GeneratePackage(tool, pkg, nil)
	if err != nil {
		return fmt.Errorf("Go codegen: %w", err)
	}
	return write(filepath.Join(out, "go"), goFiles)
}

func canonical(schemaPath string) error {
	spec, err := readSpec(schemaPath)
	if err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	var generic any // re-decoded so that map keys are sorted on output
	if err := json.Unmarshal(data, &generic); err != nil {
		return err
	}
	data, err = json.MarshalIndent(generic, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(data))
	return err
}

func main() {
	var err error
	switch {
	case len(os.Args) == 4 && os.Args[1] == "gen":
		err = gen(os.Args[2], os.Args[3])
	case len(os.Args) == 3 && os.Args[1] == "canonical":
		err = canonical(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: sdkgen gen SCHEMA OUTDIR | sdkgen canonical SCHEMA")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdkgen: %v\n", err)
		os.Exit(1)
	}
}
