#!/usr/bin/env python3
"""Checks an SPDX 2.3 JSON document: usage `check_spdx.py FILE`; exit 1 with the reasons.

1. JSON Schema (draft 2019-09, validated with python3-jsonschema): the document, package,
   checksum, external-reference, extracted-license and relationship objects as SPDX 2.3
   defines them (spdx-spec, chapters 6, 7, 10, 11 and its JSON schema): required fields,
   no unknown fields, the SPDXID, date and checksum patterns and the enumerations. Written
   here from the specification; it covers every object hyve writes.
2. What a schema cannot say: SPDXIDs are unique, every relationship names an element of the
   document, every LicenseRef used is declared, DESCRIBES points at something, and (when
   Debian's node-spdx-license-ids is installed) every license id is on the SPDX license list.
"""

import json
import re
import sys

import jsonschema

DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]|23:59:60)Z$"
SPDXID = r"^SPDXRef-[a-zA-Z0-9.-]+$"
ALGORITHMS = ["SHA1", "SHA224", "SHA256", "SHA384", "SHA512", "SHA3-256", "SHA3-384", "SHA3-512",
              "BLAKE2b-256", "BLAKE2b-384", "BLAKE2b-512", "BLAKE3", "MD2", "MD4", "MD5", "MD6", "ADLER32"]
RELATIONSHIPS = [
    "DESCRIBES", "DESCRIBED_BY", "CONTAINS", "CONTAINED_BY", "DEPENDS_ON", "DEPENDENCY_OF",
    "DEPENDENCY_MANIFEST_OF", "BUILD_DEPENDENCY_OF", "DEV_DEPENDENCY_OF", "OPTIONAL_DEPENDENCY_OF",
    "PROVIDED_DEPENDENCY_OF", "TEST_DEPENDENCY_OF", "RUNTIME_DEPENDENCY_OF", "EXAMPLE_OF", "GENERATES",
    "GENERATED_FROM", "ANCESTOR_OF", "DESCENDANT_OF", "VARIANT_OF", "DISTRIBUTION_ARTIFACT", "PATCH_FOR",
    "PATCH_APPLIED", "COPY_OF", "FILE_ADDED", "FILE_DELETED", "FILE_MODIFIED", "EXPANDED_FROM_ARCHIVE",
    "DYNAMIC_LINK", "STATIC_LINK", "DATA_FILE_OF", "TEST_CASE_OF", "BUILD_TOOL_OF", "DEV_TOOL_OF",
    "TEST_OF", "TEST_TOOL_OF", "DOCUMENTATION_OF", "OPTIONAL_COMPONENT_OF", "METAFILE_OF", "PACKAGE_OF",
    "AMENDS", "PREREQUISITE_FOR", "HAS_PREREQUISITE", "REQUIREMENT_DESCRIPTION_FOR", "SPECIFICATION_FOR",
    "OTHER",
]
PURPOSES = ["APPLICATION", "FRAMEWORK", "LIBRARY", "CONTAINER", "OPERATING-SYSTEM", "DEVICE", "FIRMWARE",
            "SOURCE", "ARCHIVE", "FILE", "INSTALL", "OTHER"]
STRING = {"type": "string"}

CHECKSUM = {
    "type": "object",
    "properties": {"algorithm": {"enum": ALGORITHMS}, "checksumValue": {"type": "string", "pattern": "^[0-9a-fA-F]+$"}},
    "required": ["algorithm", "checksumValue"],
    "additionalProperties": False,
}
EXTERNAL_REF = {
    "type": "object",
    "properties": {
        "referenceCategory": {"enum": ["SECURITY", "PACKAGE-MANAGER", "PACKAGE_MANAGER", "PERSISTENT-ID",
                                       "PERSISTENT_ID", "OTHER"]},
        "referenceType": STRING,
        "referenceLocator": {"type": "string", "pattern": r"^\S+$"},
        "comment": STRING,
    },
    "required": ["referenceCategory", "referenceType", "referenceLocator"],
    "additionalProperties": False,
}
PACKAGE = {
    "type": "object",
    "properties": {
        "SPDXID": {"type": "string", "pattern": SPDXID},
        "name": STRING, "versionInfo": STRING, "packageFileName": STRING, "supplier": STRING,
        "originator": STRING, "downloadLocation": STRING, "filesAnalyzed": {"type": "boolean"},
        "packageVerificationCode": {"type": "object"},
        "checksums": {"type": "array", "items": CHECKSUM},
        "homepage": STRING, "sourceInfo": STRING, "licenseConcluded": STRING,
        "licenseInfoFromFiles": {"type": "array", "items": STRING}, "licenseDeclared": STRING,
        "licenseComments": STRING, "copyrightText": STRING, "summary": STRING, "description": STRING,
        "comment": STRING, "externalRefs": {"type": "array", "items": EXTERNAL_REF},
        "attributionTexts": {"type": "array", "items": STRING},
        "primaryPackagePurpose": {"enum": PURPOSES},
        "releaseDate": {"type": "string", "pattern": DATE}, "builtDate": {"type": "string", "pattern": DATE},
        "validUntilDate": {"type": "string", "pattern": DATE},
        "annotations": {"type": "array"}, "hasFiles": {"type": "array", "items": STRING},
    },
    "required": ["SPDXID", "name", "downloadLocation"],
    "additionalProperties": False,
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "properties": {
        "$schema": STRING,
        "spdxVersion": {"const": "SPDX-2.3"},
        "dataLicense": {"const": "CC0-1.0"},
        "SPDXID": {"const": "SPDXRef-DOCUMENT"},
        "name": STRING,
        "documentNamespace": {"type": "string", "pattern": r"^[a-z][a-z0-9+.-]*:[^#\s]+$"},
        "externalDocumentRefs": {"type": "array"},
        "creationInfo": {
            "type": "object",
            "properties": {
                "created": {"type": "string", "pattern": DATE},
                "creators": {"type": "array", "minItems": 1,
                             "items": {"type": "string", "pattern": "^(Person|Organization|Tool): .+"}},
                "licenseListVersion": STRING,
                "comment": STRING,
            },
            "required": ["created", "creators"],
            "additionalProperties": False,
        },
        "comment": STRING,
        "documentDescribes": {"type": "array", "items": STRING},
        "packages": {"type": "array", "items": PACKAGE},
        "files": {"type": "array"},
        "snippets": {"type": "array"},
        "hasExtractedLicensingInfos": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "licenseId": {"type": "string", "pattern": r"^LicenseRef-[a-zA-Z0-9.-]+$"},
                    "extractedText": STRING, "name": STRING, "comment": STRING,
                    "seeAlsos": {"type": "array", "items": STRING}, "crossRefs": {"type": "array"},
                },
                "required": ["licenseId", "extractedText"],
                "additionalProperties": False,
            },
        },
        "relationships": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "spdxElementId": STRING, "relatedSpdxElement": STRING,
                    "relationshipType": {"enum": RELATIONSHIPS}, "comment": STRING,
                },
                "required": ["spdxElementId", "relationshipType", "relatedSpdxElement"],
                "additionalProperties": False,
            },
        },
        "annotations": {"type": "array"},
    },
    "required": ["spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "creationInfo"],
    "additionalProperties": False,
}
# Current and deprecated license ids (old Alpine packages say GPL-2.0), and exceptions.
LICENSE_LISTS = ["/usr/share/nodejs/spdx-license-ids/index.json", "/usr/share/nodejs/spdx-license-ids/deprecated.json",
                 "/usr/share/nodejs/spdx-exceptions/index.json"]
SPECIAL = {"NOASSERTION", "NONE"}


def license_ids(expression):
    """The ids in a license expression (operators and parentheses dropped)."""
    return [t for t in re.split(r"[\s()]+", expression) if t and t not in ("AND", "OR", "WITH")]


def check(doc):
    problems = []
    validator = jsonschema.Draft201909Validator(SCHEMA)
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        problems.append("schema: /%s: %s" % ("/".join(map(str, e.absolute_path)), e.message))
    packages = doc.get("packages", [])
    ids = [p.get("SPDXID") for p in packages] + [doc.get("SPDXID")]
    seen = set()
    for i in ids:
        if i in seen:
            problems.append("SPDXID %s is used twice" % i)
        seen.add(i)
    for r in doc.get("relationships", []):
        for side in ("spdxElementId", "relatedSpdxElement"):
            if r.get(side) not in seen and r.get(side) not in SPECIAL:
                problems.append("relationship %s names %s, which is not in the document" % (r, r.get(side)))
    if not any(r.get("relationshipType") == "DESCRIBES" and r.get("spdxElementId") == "SPDXRef-DOCUMENT"
               for r in doc.get("relationships", [])):
        problems.append("the document DESCRIBES nothing")
    declared = {x.get("licenseId") for x in doc.get("hasExtractedLicensingInfos", [])}
    known = None
    try:
        known = set()
        for path in LICENSE_LISTS:
            with open(path) as f:
                known |= set(json.load(f))
    except OSError:
        known = None
    for p in packages:
        for field in ("licenseDeclared", "licenseConcluded"):
            for lid in license_ids(p.get(field, "NOASSERTION")):
                if lid in SPECIAL:
                    continue
                if lid.startswith("LicenseRef-"):
                    if lid not in declared:
                        problems.append("%s: %s %s is not declared in hasExtractedLicensingInfos"
                                        % (p.get("SPDXID"), field, lid))
                elif known is not None and lid.rstrip("+") not in known:
                    problems.append("%s: %s %s is not on the SPDX license list" % (p.get("SPDXID"), field, lid))
    return problems


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_spdx.py FILE")
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    problems = check(doc)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("%s: valid SPDX 2.3 (%d packages, %d relationships)"
          % (sys.argv[1], len(doc.get("packages", [])), len(doc.get("relationships", []))))


if __name__ == "__main__":
    main()
