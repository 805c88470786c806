//! MMBench and MMBench-CN: `score` writes convert_mmbench_for_submission.py's upload (its cells;
//! the files carry a timestamp) and gives VLMEvalKit's CircularEval with exact matching (and the
//! reading before PR #1552); the prompts are model_vqa_mmbench.py's; bad input is named.

use std::io::Cursor;

use calamine::{open_workbook_from_rs, Data, Reader, Xlsx};
use serde_json::{json, Value};
use tita_bench::benchmark::{by_name, DataSpec};
use tita_decode::ImageInput;

use crate::common::{
    assert_matches, copy_fixture, data, error_of, expected, fixture_answers, queries, read_json,
    report_run, score, write,
};

/// The sheet names and the cells of an .xlsx (empty cells as null, numbers as numbers).
fn xlsx_cells(bytes: Vec<u8>) -> (Vec<String>, Value) {
    let mut book: Xlsx<_> = open_workbook_from_rs(Cursor::new(bytes)).unwrap();
    let names = book.sheet_names();
    let range = book.worksheet_range(&names[0]).unwrap();
    let rows = range
        .rows()
        .map(|row| {
            row.iter()
                .map(|cell| match cell {
                    Data::Empty => Value::Null,
                    Data::String(s) => json!(s),
                    Data::Int(i) => json!(i),
                    Data::Float(f) if f.fract() == 0.0 => json!(*f as i64),
                    Data::Float(f) => json!(f),
                    other => panic!("unexpected cell {other:?}"),
                })
                .collect::<Value>()
        })
        .collect();
    (names, rows)
}

fn check(name: &str) {
    let dir = data().join(name);
    let all = expected();
    let files = &all[name]["files"];
    let answers = dir.join(files["answers"].as_str().unwrap());
    let card = score(name, &dir, &answers).unwrap();

    let converter = &all[name]["llava_converter"];
    let upload = files["submission_xlsx"].as_str().unwrap();
    assert_eq!(card.files.len(), 1);
    assert_eq!(card.files[0].0.to_str().unwrap(), upload);
    let (sheets, cells) = xlsx_cells(card.files[0].1.clone());
    assert_eq!(sheets, [converter["xlsx_sheet"].as_str().unwrap()]);
    assert_eq!(cells, converter["xlsx_cells"]);
    // The recorded upload reads back to the same cells (the reader is not the thing tested).
    let (_, recorded) = xlsx_cells(std::fs::read(dir.join(upload)).unwrap());
    assert_eq!(recorded, converter["xlsx_cells"]);

    let current = &all[name]["vlmevalkit_circular_exact_matching"];
    assert_matches(
        &card.metrics["vlmevalkit_circular_exact_matching"],
        current,
        "vlmevalkit_circular_exact_matching",
    );
    // Exactly the groups, rows and columns recorded, none more.
    for key in ["groups", "can_infer", "report_acc"] {
        let got = card.metrics["vlmevalkit_circular_exact_matching"][key]
            .as_object()
            .unwrap();
        assert_eq!(got.len(), current[key].as_object().unwrap().len(), "{key}");
    }
    assert_matches(
        &card.metrics["vlmevalkit_pre_pr1552"],
        &all[name]["vlmevalkit_pre_pr1552"],
        "vlmevalkit_pre_pr1552",
    );

    // The printed `_acc.csv`: every column of report_acc, quoted, floats as Python prints them.
    let lines: Vec<&str> = card.printed.lines().collect();
    assert_eq!(lines.len(), 2, "{}", card.printed);
    let unquote = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim_matches('"').to_string())
            .collect()
    };
    let (header, values) = (unquote(lines[0]), unquote(lines[1]));
    assert_eq!(&header[..2], ["split", "Overall"]);
    let report = current["report_acc"].as_object().unwrap();
    assert_eq!(header.len(), report.len());
    for (h, v) in header.iter().zip(&values) {
        let want = &report[h][0];
        match want.as_f64() {
            Some(x) => assert_eq!(*v, tita_bench::python::float(x), "{h}"),
            None => assert_eq!(v, want.as_str().unwrap(), "{h}"),
        }
    }
}

#[test]
fn mmbench_upload_and_circular_eval_match_the_official_code() {
    check("mmbench");
}

#[test]
fn mmbench_cn_upload_and_circular_eval_match_the_official_code() {
    check("mmbench_cn");
}

#[test]
fn prompts_and_images_are_llavas() {
    let tmp = tempfile::tempdir().unwrap();
    let all = expected();
    for (name, key, instruction) in [
        (
            "mmbench",
            "mmbench",
            "Answer with the option's letter from the given choices directly.",
        ),
        ("mmbench_cn", "mmbench_cn", "请直接回答选项字母。"),
    ] {
        let bench = by_name(name).unwrap();
        assert_eq!(bench.instruction(), instruction);
        assert_eq!(bench.max_new_tokens(), 1024);
        let images = tmp.path().join(name);
        let sets = bench
            .queries(&DataSpec {
                paths: vec![data().join(name)],
                images: Some(images.clone()),
                ..DataSpec::default()
            })
            .unwrap();
        assert_eq!(sets.len(), 1);
        let want = all["prompts"][key].as_array().unwrap();
        let asked = &sets[0].queries;
        assert_eq!(asked.len(), want.len(), "{name}");
        for (q, w) in asked.iter().zip(want) {
            assert_eq!(
                serde_json::to_value(&q.id).unwrap(),
                w["question_id"],
                "{name}"
            );
            // The answers file records the question without the instruction line.
            assert_eq!(q.text, w["prompt"].as_str().unwrap());
            let model_sees = format!("<image>\n{}", q.prompt(bench.instruction()));
            assert!(
                w["model_input"].as_str().unwrap().contains(&model_sees),
                "{model_sees}"
            );
            let Some(ImageInput::Path(image)) = &q.image else {
                panic!("{:?} has no image", q.id);
            };
            assert!(image.starts_with(&images));
            let bytes = std::fs::read(image).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{}",
                image.display()
            );
        }
    }
    let mm = by_name("mmbench").unwrap();
    assert_eq!(mm.parse_answer("(D)"), "D");
    assert_eq!(mm.parse_answer("C or B"), "");
}

#[test]
fn bad_mmbench_input_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mmbench", tmp.path());
    let answers = dir.join("answers/mmbench_dev_20230712/llava-v1.5-7b.jsonl");
    let text = std::fs::read_to_string(&answers).unwrap();
    let first = text.lines().next().unwrap();
    let bad = dir.join("answers/mmbench_dev_20230712/bad.jsonl");

    write(&bad, &format!("{first}\n{{\"question_id\": 248,\n"));
    let e = error_of(score("mmbench", &dir, &bad));
    assert!(e.contains("bad.jsonl:2: malformed line"), "{e}");

    write(&bad, &format!("{first}\n{}\n", first.replace("241", "999")));
    let e = error_of(score("mmbench", &dir, &bad));
    assert!(
        e.contains("bad.jsonl:2: question_id 999 is not an index of")
            && e.contains("mmbench_dev_20230712.tsv"),
        "{e}"
    );

    write(&bad, "{\"question_id\": \"241\", \"text\": \"A\"}\n");
    let e = error_of(score("mmbench", &dir, &bad));
    assert!(
        e.contains("bad.jsonl:1: field `question_id`: expected the TSV's integer index"),
        "{e}"
    );

    let tsv = dir.join("mmbench_dev_20230712.tsv");
    let table = std::fs::read_to_string(&tsv).unwrap();
    let mut rows: Vec<String> = table.lines().map(str::to_string).collect();
    let original = rows.clone();
    rows[2] = rows[2].replacen('\t', "", 1);
    write(&tsv, &rows.join("\n"));
    let e = error_of(score("mmbench", &dir, &answers));
    assert!(
        e.contains("mmbench_dev_20230712.tsv:3: 13 fields, the header has 14"),
        "{e}"
    );

    let mut rows = original.clone();
    let mut fields: Vec<String> = rows[1].split('\t').map(str::to_string).collect();
    fields[9] = "not base64!".into();
    rows[1] = fields.join("\t");
    write(&tsv, &rows.join("\n"));
    let e = error_of(by_name("mmbench").unwrap().queries(&DataSpec {
        paths: vec![tsv.clone()],
        images: Some(tmp.path().join("images")),
        ..DataSpec::default()
    }));
    assert!(
        e.contains("mmbench_dev_20230712.tsv:2: column `image`: not base64"),
        "{e}"
    );

    std::fs::remove_file(&tsv).unwrap();
    let e = error_of(score("mmbench", &dir, &answers));
    assert!(e.contains("no .tsv here; mmbench expects"), "{e}");
    let e = error_of(score("mmbench", &tmp.path().join("nowhere"), &answers));
    assert!(e.contains("nowhere: not found; mmbench expects"), "{e}");
}

#[test]
fn a_runs_answers_are_scored_the_same_way() {
    // The run's images go beside the TSV (the default), where the report finds the TSV again.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("mmbench", tmp.path());
    let sets = queries("mmbench", &dir, None);
    assert!(dir.join("mmbench_dev_20230712_images/241.png").is_file());
    let answers = fixture_answers(&dir.join("answers/mmbench_dev_20230712/llava-v1.5-7b.jsonl"));
    let out = tmp.path().join("run");
    // model_vqa_mmbench.py records the question without the instruction the model saw.
    let report = report_run("mmbench", &dir, &sets, &out, |q, _| {
        answers.get(&(q.id.clone(), q.text.clone())).cloned()
    });
    let numbers = read_json(&out.join("mmbench.json"));
    let want = &expected()["mmbench"];
    assert_matches(
        &numbers["greedy/mmbench_dev_20230712"],
        &want["vlmevalkit_circular_exact_matching"],
        "run",
    );
    let (_, cells) = xlsx_cells(
        std::fs::read(out.join("answers_upload/mmbench_dev_20230712/greedy.xlsx")).unwrap(),
    );
    assert_eq!(cells, want["llava_converter"]["xlsx_cells"]);
    assert!(
        report.contains("| greedy | mmbench_dev_20230712 | 30 | 44.44 |"),
        "{report}"
    );
}
