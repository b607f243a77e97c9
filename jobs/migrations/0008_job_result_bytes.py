from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_client_address"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="result_bytes",
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
