import math

from worldmodels.logger import RunLogger, read_csv


def test_csv_keeps_columns_aligned_when_a_new_column_appears(tmp_path):
    logger = RunLogger(tmp_path, "stage")
    logger.log(0, loss=1.0)
    logger.log(1, loss=0.5, real=7.0)
    logger.log(2, loss=0.25)
    logger.close()
    rows = read_csv(tmp_path / "stage.csv")
    assert [r["loss"] for r in rows] == [1.0, 0.5, 0.25]
    assert math.isnan(rows[0]["real"]) and rows[1]["real"] == 7.0 and math.isnan(rows[2]["real"])
    assert (tmp_path / "tensorboard" / "stage").is_dir()


def test_a_resumed_stage_drops_rows_logged_after_its_checkpoint(tmp_path):
    logger = RunLogger(tmp_path, "stage")
    for step in (10, 20, 30):  # 30 was logged, then the run was killed before its checkpoint
        logger.log(step, loss=float(step))
    logger.close()
    logger = RunLogger(tmp_path, "stage", keep_through=20)  # resumes from the step-20 checkpoint
    logger.log(30, loss=3.0)
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_csv(tmp_path / "stage.csv")] == [
        (10, 10.0), (20, 20.0), (30, 3.0)]
